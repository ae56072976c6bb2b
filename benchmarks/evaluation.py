"""Evaluation throughput: scoring SST-2's dev set with a 10-token prompt on SmolLM2-135M, three ways.

- naive: the rows in file order, 64 a forward, the prompt run again with every row;
- by length: the rows batched in order of length, so a forward carries little padding;
- by length + prompt reused: and the prompt (a fixed prefix at evaluation time) run once, its keys/values
  reused for every row.
A hard prompt (token ids; and in the smaller runs a soft prompt, vectors) is measured; the predictions of the
three ways are checked to be the same. Examples/second, the ways interleaved, median of repeats.

    python benchmarks/evaluation.py            # SmolLM2, all 872 dev rows: ~5 min on 2 cores
    python benchmarks/evaluation.py --quick    # SmolLM2, 200 rows, one repeat
    python benchmarks/evaluation.py --tiny     # a tiny random GPT-2 (the test suite's smoke run)
    python benchmarks/evaluation.py --device cuda --random-weights --output benchmarks/results/evaluation_h100.json

Writes benchmarks/results/evaluation.json and a markdown table next to it.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from reporting import write_results
from subjects import SHARED, add_measurement_options, load, on_gpu, parser, plan_name, synchronize

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "evaluation.json"
WAYS = {"naive": {"by_length": False, "reuse_prompt": False},
        "by length": {"by_length": True, "reuse_prompt": False},
        "by length + prompt reused": {"by_length": True, "reuse_prompt": True}}
PLANS = {  # a soft prompt costs what a hard one does at evaluation: the full run measures the hard one only
    "full": {"rows": None, "repeats": 1, "prompts": ["hard"]},
    "quick": {"rows": 200, "repeats": 1, "prompts": ["hard", "soft"]},
    "tiny": {"rows": 24, "repeats": 1, "prompts": ["hard", "soft"]},
}
PROMPT_LENGTH = 10


def main() -> None:
    options = parser(__doc__, RESULTS, quick_help="200 rows, one repeat")
    add_measurement_options(options)
    args = options.parse_args()
    name = plan_name(args)
    plan, started = dict(PLANS[name]), time.time()
    plan["repeats"] = args.repeats or plan["repeats"]

    from peft_softhard import ClassificationObjective
    from peft_softhard.app.tasks import SST2

    model, tokenizer = load(args.tiny, args.random_weights, args.device)
    model.requires_grad_(False)
    texts, labels = SST2.load("eval", limit=plan["rows"], seed=0, data_dir=str(SHARED / "data"))
    objective = ClassificationObjective(tokenizer, texts[:1], labels[:1], template=SST2.manual_template,
                                        label_words=SST2.label_words, held_out_texts=texts, held_out_labels=labels)
    ids = tokenizer(" Classify the sentiment of this movie review as positive or negative",
                    add_special_tokens=False, return_tensors="pt")["input_ids"][0, :PROMPT_LENGTH].to(args.device)
    prompts = {"hard": ids, "soft": model.get_input_embeddings()(ids).detach() + 0.01}
    prompts = {kind: prompts[kind] for kind in plan["prompts"]}
    seconds: dict[tuple[str, str], list[float]] = {}
    predictions: dict[tuple[str, str], list[int]] = {}
    if on_gpu(args.device):  # one untimed pass: the first forwards load kernels
        for prompt in prompts.values():
            for switches in WAYS.values():
                objective.predictions(model, prompt, **switches)
    for _ in range(plan["repeats"]):
        for kind, prompt in prompts.items():
            for way, switches in WAYS.items():
                synchronize(args.device)
                clock = time.perf_counter()
                predictions[kind, way] = objective.predictions(model, prompt, **switches)  # a list: waits for the GPU
                seconds.setdefault((kind, way), []).append(time.perf_counter() - clock)
                print(f"{kind} / {way}: {seconds[kind, way][-1]:.1f} s", flush=True)
    rows = []
    for kind in prompts:
        naive = statistics.median(seconds[kind, "naive"])
        for way in WAYS:
            median = statistics.median(seconds[kind, way])
            rows.append({"prompt": kind, "way": way, "seconds": round(median, 2),
                         "examples_per_second": round(len(labels) / median, 2), "speedup": round(naive / median, 2),
                         "same_predictions": predictions[kind, way] == predictions[kind, "naive"]})
    lines = [f"{len(labels)} SST-2 dev rows, {PROMPT_LENGTH}-token prompt, median of {plan['repeats']}:", "",
             "| prompt | way | seconds | examples/s | speed-up | same predictions |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['prompt']} | {r['way']} | {r['seconds']} | {r['examples_per_second']} | {r['speedup']}x | "
              f"{'yes' if r['same_predictions'] else 'NO'} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(table + "\n")
    write_results(output, "evaluation throughput: naive vs batched by length vs prompt keys/values reused", started,
                  plan=name, rows=len(labels), prompt_length=PROMPT_LENGTH, repeats=plan["repeats"], results=rows,
                  device=args.device, random_weights=args.random_weights)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
