"""Many prompts, one frozen model: mixed-task batches and prompt ensembles on SmolLM2-135M and SST-2.

1. Throughput: requests for K tasks (K = 1, 2, 4, 8 prompt adapters of 5-20 tokens) arrive in batches of 16.
   "mixed" runs each batch with one call with `adapter_names=` (one prompt per row; on the CPU it splits the
   rows into groups of similar total length, see `prompt_layout.length_groups`); "mixed, one forward" is the
   same call kept to one forward (as wide as the longest prompt plus the longest input); "separate" splits it
   into one batch per task and switches the active adapter between them (what peft offers for prompt
   methods). Examples/second, median of interleaved repeats.
2. Equality: the largest |logit difference| between a row in a mixed batch of all K = 8 adapters and the same
   row run alone with its adapter active (no padding).
3. Ensemble: three 10-token soft prompts (seeds 0, 1, 2) and one 5-token PEZ hard prompt, trained on 1,000
   SST-2 training rows in front of the manual template (best step chosen on 100 other training rows), scored
   on the dev set in one batched pass; each member's accuracy next to the mean-log-probability and
   majority-vote ensembles.

    python benchmarks/mixed_batch.py            # SmolLM2, full dev set (872 rows): ~20 min on 2 cores
    python benchmarks/mixed_batch.py --quick    # SmolLM2, smaller: < 10 min
    python benchmarks/mixed_batch.py --tiny     # a tiny random GPT-2 (the test suite's smoke run)

Trained members are kept in --work-dir, so an interrupted run continues where it stopped. Writes
benchmarks/results/mixed_batch.json and a markdown table next to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from reporting import write_results
from subjects import SHARED, load, parser, plan_name, strip_adapters

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "mixed_batch.json"
PROMPT_LENGTHS = [10, 20, 5, 10, 15, 10, 5, 20]  # of the K task adapters
TASK_COUNTS = [1, 2, 4, 8]
BATCH = 16
MODES = ("mixed", "mixed, one forward", "separate")

PLANS = {  # rows scored for throughput, repeats, ensemble: training steps (soft, hard), dev rows
    "full": {"rows": 96, "repeats": 3, "soft_steps": 60, "hard_steps": 40, "dev_rows": None, "train_rows": 1000},
    "quick": {"rows": 32, "repeats": 1, "soft_steps": 10, "hard_steps": 6, "dev_rows": 100, "train_rows": 200},
    "tiny": {"rows": 32, "repeats": 1, "soft_steps": 2, "hard_steps": 2, "dev_rows": 24, "train_rows": 24},
}


def task_adapters(base, count: int):
    from peft import get_peft_model

    from peft_softhard import SoftHardConfig

    torch.manual_seed(0)
    names = [f"task{i}" for i in range(count)]
    model = None
    for name, length in zip(names, PROMPT_LENGTHS, strict=False):
        config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=length, mode="soft", init="vocab")
        if model is None:
            model = get_peft_model(base, config, adapter_name=name)
        else:
            model.add_adapter(name, config)
    return model.eval(), names


def measure_throughput(model, names, tokenizer, texts, repeats: int) -> tuple[list[dict], dict[str, float]]:
    """Examples/second, mixed vs separate, for each K; and the largest mixed-vs-alone logit difference."""
    rng = random.Random(0)
    batches = [tokenizer(texts[s : s + BATCH], return_tensors="pt", padding=True) for s in range(0, len(texts), BATCH)]
    times: dict[tuple[int, str], list[float]] = {}
    with torch.no_grad():
        for _ in range(repeats):
            for count in TASK_COUNTS:
                assignments = [[rng.choice(names[:count]) for _ in range(len(b["input_ids"]))] for b in batches]
                for mode in MODES:
                    started = time.perf_counter()
                    for batch, tasks in zip(batches, assignments, strict=True):
                        run_batch(model, batch, tasks, mode)
                    times.setdefault((count, mode), []).append(time.perf_counter() - started)
        worst = largest_difference(model, names, batches[0])
    rows = []
    for count in TASK_COUNTS:
        row = {"tasks": count}
        for mode in MODES:
            key = mode.replace(", ", "_").replace(" ", "_")
            row[f"{key}_examples_per_second"] = round(len(texts) / statistics.median(times[(count, mode)]), 2)
        row["speedup"] = round(row["mixed_examples_per_second"] / row["separate_examples_per_second"], 2)
        row["one_forward_speedup"] = round(row["mixed_one_forward_examples_per_second"]
                                           / row["separate_examples_per_second"], 2)
        rows.append(row)
    return rows, worst


@contextlib.contextmanager
def one_forward():
    """A mixed batch kept to one forward, as before length groups (a forward then costs 'infinitely' much)."""
    from peft_softhard.peft_boundary import prompted_calls

    saved, prompted_calls.GROUP_OVERHEAD_TOKENS = prompted_calls.GROUP_OVERHEAD_TOKENS, sys.maxsize
    try:
        yield
    finally:
        prompted_calls.GROUP_OVERHEAD_TOKENS = saved


def run_batch(model, batch, tasks: list[str], mode: str) -> None:
    if mode.startswith("mixed"):
        with one_forward() if mode == "mixed, one forward" else contextlib.nullcontext():
            model(**batch, adapter_names=tasks)
        return
    for task in dict.fromkeys(tasks):
        rows = [i for i, t in enumerate(tasks) if t == task]
        mask = batch["attention_mask"][rows]
        width = int(mask.sum(1).max())  # the sub-batch only as wide as its longest row
        model.set_adapter(task)
        model(input_ids=batch["input_ids"][rows, :width], attention_mask=mask[:, :width])


def largest_difference(model, names, batch) -> dict[str, float]:
    """Largest |logit difference| from running each row alone: in a mixed batch of every adapter, and (the
    floating-point floor of batching at all) in an ordinary one-adapter batch."""
    def versus_alone(tasks: list[str]) -> float:
        mixed = model(**batch, adapter_names=tasks).logits
        worst = 0.0
        for i, task in enumerate(tasks):
            real = batch["attention_mask"][i].bool()
            model.set_adapter(task)
            alone = model(input_ids=batch["input_ids"][i][real][None]).logits[0]
            worst = max(worst, (mixed[i, -width:][real] - alone[-int(real.sum()) :]).abs().max().item())
        return worst

    width = batch["input_ids"].shape[1]
    model.set_adapter(names[0])
    plain = model(**batch).logits  # peft's own batch, one adapter: the same rows, no mixing
    floor = 0.0
    for i in range(len(batch["input_ids"])):
        real = batch["attention_mask"][i].bool()
        alone = model(input_ids=batch["input_ids"][i][real][None]).logits[0]
        floor = max(floor, (plain[i, -width:][real] - alone[-int(real.sum()) :]).abs().max().item())
    return {"mixed_vs_alone": versus_alone([names[i % len(names)] for i in range(len(batch["input_ids"]))]),
            "one_adapter_batch_vs_alone": floor,
            "largest_logit": plain.abs().max().item()}


def train_members(base, tokenizer, plan: dict, work: Path, tiny: bool) -> dict[str, Path]:
    """Three soft prompts and one PEZ hard prompt, each saved once in `work` (reused when the run resumes)."""
    from peft import get_peft_model

    from peft_softhard import ClassificationObjective, DiscoveryConfig, SoftHardConfig, run
    from peft_softhard.app.tasks import SST2
    from peft_softhard.files.checkpoint import save_adapter_atomically
    from peft_softhard.optimization.training import TrainConfig, train_prompt

    texts, labels = SST2.load("train", limit=plan["train_rows"] + 100, seed=0, data_dir=str(SHARED / "data"))
    train, selection = slice(0, plan["train_rows"]), slice(plan["train_rows"], None)
    objective = ClassificationObjective(tokenizer, texts[train], labels[train], template=SST2.manual_template,
                                        label_words=SST2.label_words, held_out_texts=texts[selection],
                                        held_out_labels=labels[selection])
    members = {}
    for seed in (0, 1, 2):
        folder = work / f"soft{seed}" / "best"
        if not (folder / "adapter_model.safetensors").exists():
            torch.manual_seed(seed)
            config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=10, mode="soft", init="vocab")
            steps = plan["soft_steps"]
            interval = max(1, steps // 3)
            train_prompt(get_peft_model(base, config), objective,
                         TrainConfig(steps=steps, lr=3e-3, batch_size=8, eval_interval=interval,
                                     checkpoint_interval=interval, seed=seed), folder.parent, resume=True)
            base = strip_adapters(base)
        members[f"soft{seed}"] = folder
    folder = work / "pez" / "adapter"
    if not (folder / "adapter_model.safetensors").exists():
        prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, mode="hard", init="vocab",
                                word_start_only=not tiny, round_trip_only=not tiny)
        steps = plan["hard_steps"]
        search = DiscoveryConfig(stages=["tokens"], placement="prefix", method="pez", steps=steps, lr=0.03,
                                 batch_size=8, eval_interval=max(1, steps // 2), seed=0)
        result = run(base, objective, search, prompt, tokenizer, checkpoint_dir=str(work / "pez" / "checkpoint"),
                     resume=True)
        found = result.stages[0].prompt["token_ids"]  # the search's best tokens, even where the template alone won
        save_adapter_atomically(dataclasses.replace(result, token_ids=found).to_peft_model(base), folder)
        base = strip_adapters(base)
    members["pez"] = folder
    return members


def score_members(base, tokenizer, members: dict[str, Path], dev_rows: int | None) -> dict:
    from peft_softhard import ClassificationObjective
    from peft_softhard.app.tasks import SST2
    from peft_softhard.serving import load_adapters
    from peft_softhard.serving.ensemble import COMBINE_METHODS, score_ensemble

    texts, labels = SST2.load("eval", data_dir=str(SHARED / "data"))
    texts, labels = texts[:dev_rows], labels[:dev_rows]
    objective = ClassificationObjective(tokenizer, texts[:1], labels[:1], template=SST2.manual_template,
                                        label_words=SST2.label_words, held_out_texts=texts, held_out_labels=labels)
    model = load_adapters(base, members).eval()
    started = time.time()
    scores = score_ensemble(model, objective, list(members))
    seconds = time.time() - started
    return {
        "dev_rows": len(labels),
        "members": {name: round(accuracy, 4) for name, accuracy in scores.member_accuracy().items()},
        "ensemble": {combine: round(scores.accuracy(combine), 4) for combine in COMBINE_METHODS},
        "seconds": round(seconds, 1),
        "examples_per_second": round(len(labels) * len(members) / seconds, 2),
    }


def markdown(throughput: list[dict], worst: dict[str, float], ensemble: dict | None) -> str:
    lines = ["| tasks K | mixed batch (examples/s) | mixed, one forward | separate per-task batches | "
             "mixed / separate | one forward / separate |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['tasks']} | {r['mixed_examples_per_second']} | {r['mixed_one_forward_examples_per_second']} | "
              f"{r['separate_examples_per_second']} | {r['speedup']}x | {r['one_forward_speedup']}x |"
              for r in throughput]
    lines.append(f"\nLargest |logit difference| from running a row alone: {worst['mixed_vs_alone']:.1e} in a mixed "
                 f"batch of 8 prompts, {worst['one_adapter_batch_vs_alone']:.1e} in an ordinary one-prompt batch "
                 f"(logits up to {worst['largest_logit']:.0f} in size).")
    if ensemble:
        lines += ["", "| prompt | SST-2 dev accuracy |", "|---|---|"]
        lines += [f"| {name} | {accuracy:.4f} |" for name, accuracy in ensemble["members"].items()]
        lines += [f"| ensemble ({combine}) | {accuracy:.4f} |" for combine, accuracy in ensemble["ensemble"].items()]
        lines.append(f"\n{ensemble['dev_rows']} dev rows x {len(ensemble['members'])} prompts in one batched pass: "
                     f"{ensemble['seconds']} s ({ensemble['examples_per_second']} prompt-examples/s).")
    return "\n".join(lines)


def main() -> None:
    options = parser(__doc__, RESULTS, quick_help="smaller: < 10 min on SmolLM2")
    options.add_argument("--work-dir", default="out/benchmarks/mixed_batch", help="trained members (resumable)")
    args = options.parse_args()
    name = plan_name(args)
    plan, started = PLANS[name], time.time()
    work = Path(args.work_dir) / name

    from peft_softhard.app.tasks import SST2

    base, tokenizer = load(args.tiny)
    texts, _ = SST2.load("eval", data_dir=str(SHARED / "data"))
    requests = [SST2.manual_template.format(text=t) for t in texts[: plan["rows"]]]
    model, names = task_adapters(base, max(TASK_COUNTS))
    throughput, worst = measure_throughput(model, names, tokenizer, requests, plan["repeats"])
    print(markdown(throughput, worst, None), flush=True)
    base = strip_adapters(model)
    ensemble = score_members(base, tokenizer, train_members(base, tokenizer, plan, work, args.tiny), plan["dev_rows"])
    table = markdown(throughput, worst, ensemble)
    print(table)
    output = Path(args.output)
    output.with_suffix(".md").write_text(table + "\n")
    write_results(output, "mixed-task batches and prompt ensembles", started, plan=name, batch_size=BATCH,
                  prompt_lengths=PROMPT_LENGTHS, throughput=throughput, max_abs_logit_difference=worst,
                  ensemble=ensemble)


if __name__ == "__main__":
    main()
