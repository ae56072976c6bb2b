"""Exact candidate scoring at a slot: candidates scored per second with each row's tokens before the slot run once
and reused (cached heads) against re-encoding every whole row, on SmolLM2-135M and SST-2's manual template.

Slots: right before the answer (`Review: {text}\\nSentiment:{prompt}`, the discover default's placement) and
before the answer cue (`Review: {text}\\n{prompt}Sentiment:`). Candidates: random whole-word prompts of 1, 3 and
5 tokens, each scored on the same 16 training rows (a search step's batch), both ways interleaved; the two ways'
class log-probabilities are checked to agree (max |difference|).

    python benchmarks/slot_scoring.py            # SmolLM2: about 10 minutes on 2 cores
    python benchmarks/slot_scoring.py --quick    # one slot, one length
    python benchmarks/slot_scoring.py --tiny     # a tiny random GPT-2 (the test suite's smoke run)

Writes benchmarks/results/slot_scoring.json and a markdown table next to it.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from reporting import write_results
from subjects import SHARED, add_measurement_options, load, parser, plan_name, synchronize

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "slot_scoring.json"
SLOTS = {"end": "Review: {text}\nSentiment:{prompt}", "before_answer_cue": "Review: {text}\n{prompt}Sentiment:"}
PLANS = {
    "full": {"slots": list(SLOTS), "lengths": [1, 3, 5], "candidates": 16, "rows": 16, "repeats": 2},
    "quick": {"slots": ["end"], "lengths": [3], "candidates": 16, "rows": 16, "repeats": 1},
    "tiny": {"slots": list(SLOTS), "lengths": [1, 3], "candidates": 4, "rows": 4, "repeats": 1},
}


def main() -> None:
    options = parser(__doc__.split("\n\n")[0], RESULTS, "one slot, one prompt length")
    add_measurement_options(options)
    args = options.parse_args()
    name = plan_name(args)
    plan, started = dict(PLANS[name]), time.time()
    plan["repeats"] = args.repeats or plan["repeats"]

    from peft_softhard import ClassificationObjective, SoftHardConfig, SoftHardPromptEncoder
    from peft_softhard.app.tasks import SST2

    model, tokenizer = load(args.tiny, args.random_weights, args.device)
    texts, labels = SST2.load("train", limit=plan["rows"], seed=0, data_dir=str(SHARED / "data"))
    words = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=1, mode="hard", word_start_only=True,
                           round_trip_only=True)
    allowed = SoftHardPromptEncoder.for_model(words, model, tokenizer).allowed_token_ids()
    generator = torch.Generator().manual_seed(0)
    rows = []
    for slot in plan["slots"]:
        objective = ClassificationObjective(tokenizer, texts, labels, template=SLOTS[slot],
                                            label_words=SST2.label_words)
        for length in plan["lengths"]:
            picks = torch.randint(allowed.numel(), (plan["candidates"], length), generator=generator)
            candidates = allowed[picks]
            seconds = {"cached heads": [], "whole rows": []}
            results = {}
            with torch.no_grad():
                for _ in range(plan["repeats"]):
                    for way, reuse in (("cached heads", True), ("whole rows", False)):
                        begun = time.perf_counter()
                        results[way] = objective.candidate_class_log_probs(model, candidates, range(plan["rows"]),
                                                                           reuse_heads=reuse)
                        synchronize(args.device)
                        seconds[way].append(time.perf_counter() - begun)
            rate = {way: plan["candidates"] / statistics.median(values) for way, values in seconds.items()}
            rows.append({"slot": slot, "prompt_tokens": length, "candidates": plan["candidates"],
                         "rows": plan["rows"], "cached_heads_per_second": round(rate["cached heads"], 3),
                         "whole_rows_per_second": round(rate["whole rows"], 3),
                         "speedup": round(rate["cached heads"] / rate["whole rows"], 2),
                         "max_abs_difference": float((results["cached heads"] - results["whole rows"]).abs().max())})
            print(rows[-1], flush=True)
    payload = write_results(Path(args.output), f"candidates scored per second at a slot, {name} plan", started,
                            plan=plan, device=args.device, rows=rows)
    lines = ["| slot | prompt tokens | cached heads (candidates/s) | whole rows (candidates/s) | speed-up | max |Δ| |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['slot']} | {r['prompt_tokens']} | {r['cached_heads_per_second']} | {r['whole_rows_per_second']} "
              f"| {r['speedup']}× | {r['max_abs_difference']:.1e} |" for r in payload["rows"]]
    Path(args.output).with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
