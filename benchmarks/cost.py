"""Cost of a training step: our soft and hard (PEZ) modes and stock peft PROMPT_TUNING against the floor.

The floor is what any prompt method pays: a forward and backward of the frozen model with gradients only to
the input embeddings (a prompt tensor that is a plain leaf, no optimizer). Every method runs the same task
loss (SmolLM2-135M, SST-2 rows in the manual template, label words " negative"/" positive") on the same
batches, 10 virtual tokens:
- floor: the loss and its backward, nothing else;
- soft: our SOFTHARD soft prompt — the loss, backward, AdamW step;
- hard: our SOFTHARD hard prompt (PEZ) — the nearest-token projection of the changed prompt over the whole
  vocabulary, the straight-through loss, backward, AdamW step;
- stock PROMPT_TUNING: peft's own prompt embedding, the same loss, backward, AdamW step.
Step times are measured in one process, the methods interleaved, median of repeats; peak memory in one fresh
process per method: the highest RSS while stepping (the peak is reset after loading the model, so loading's
own peak does not hide the step's), on a GPU the most GPU memory allocated while stepping. A second table shows
the same methods through the peft model's own forward with labels, `model(input_ids, attention_mask, labels)`,
as transformers.Trainer calls it (the language-modelling loss on the templated row and its label word); its
floor is the frozen model on [a leaf prompt; the embedded row] with the same labels. A third table shows how
the soft step's time grows with prompt length and batch; a fourth, the floor with the output head run only at
the positions the loss reads (`logits_to_keep`, as scoring does) against the head at every position; a fifth,
placement (issue 32): soft and hard steps through the peft forward with labels, the prompt in front of the
manual template against the prompt at its slot before the answer cue (`Review: {text}\n{prompt}Sentiment:`), the
same tokens in both (rows from `tokenize_with_prompt`, labels on the label word only).

    python benchmarks/cost.py            # SmolLM2: ~4 min on 2 cores
    python benchmarks/cost.py --quick    # SmolLM2, fewer repeats
    python benchmarks/cost.py --tiny     # a tiny random GPT-2 (the test suite's smoke run)
    python benchmarks/cost.py --device cuda --random-weights --output benchmarks/results/cost_h100.json

Writes benchmarks/results/cost.json and a markdown table next to it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from reporting import write_results
from subjects import SHARED, add_measurement_options, load, on_gpu, parser, plan_name, synchronize

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cost.json"
METHODS = ["floor", "soft", "hard", "stock PROMPT_TUNING"]
HEAD_EVERYWHERE = "floor, output head at every position"
PLACED = ["soft, prefix", "soft, slot", "hard, prefix", "hard, slot"]  # (mode, placement) through the peft forward
SLOT_TEMPLATE = "Review: {text}\n{prompt}Sentiment:"  # what scoring did before it passed logits_to_keep
PLANS = {  # interleaved repeats, memory steps, sweep repeats, batch size of the main table
    "full": {"repeats": 10, "memory_steps": 5, "sweep_repeats": 3, "batch": 8,
             "lengths": [1, 5, 10, 20], "batches": [4, 8, 16]},
    "quick": {"repeats": 3, "memory_steps": 2, "sweep_repeats": 1, "batch": 8,
              "lengths": [1, 10, 20], "batches": [4, 8]},
    "tiny": {"repeats": 2, "memory_steps": 1, "sweep_repeats": 1, "batch": 4, "lengths": [1, 5], "batches": [2, 4]},
}


def sst2_objective(tokenizer, rows: int = 256):
    from peft_softhard import ClassificationObjective
    from peft_softhard.app.tasks import SST2

    texts, labels = SST2.load("train", limit=rows, seed=0, data_dir=str(SHARED / "data"))
    return ClassificationObjective(tokenizer, texts, labels, template=SST2.manual_template,
                                   label_words=SST2.label_words)


def make_step(method: str, base, objective, length: int):
    """A function that runs one training step of `method` on a batch of example indices."""
    from peft import PromptTuningConfig, get_peft_model

    from peft_softhard import SoftHardConfig

    base.requires_grad_(False)
    if method in ("floor", HEAD_EVERYWHERE):
        prompt = base.get_input_embeddings().weight[:length].detach().clone().requires_grad_(True)
        if method == HEAD_EVERYWHERE:  # the model's head at every position, read at one (before logits_to_keep)
            from peft_softhard.testing import WithoutLogitsToKeep

            base = WithoutLogitsToKeep(base)

        def floor_step(indices):
            prompt.grad = None
            objective.loss(base, prompt, indices).backward()

        return floor_step
    if method == "stock PROMPT_TUNING":
        peft_model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=length))
        encoder = peft_model.prompt_encoder["default"]
        tokens = peft_model.prompt_tokens["default"].to(base.device)
        prompt_of = lambda: encoder(tokens)  # noqa: E731
    else:
        config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=length, mode=method, init="vocab")
        peft_model = get_peft_model(base, config)
        encoder = peft_model.prompt_encoder["default"]
        prompt_of = encoder.prompt_embeddings
    parameters = [p for p in encoder.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=3e-3)

    def step(indices):
        optimizer.zero_grad()
        objective.loss(base, prompt_of(), indices).backward()
        optimizer.step()

    return step


def lm_rows(tokenizer, rows: int = 256):
    """A function from example indices to a right-padded language-modelling batch: each SST-2 training row in the
    manual template followed by its label word, labels -100 on padding (what a Trainer's collator gives)."""
    from peft_softhard.app.tasks import SST2

    texts, labels = SST2.load("train", limit=rows, seed=0, data_dir=str(SHARED / "data"))
    texts = [SST2.manual_template.format(text=t) + SST2.label_words[y] for t, y in zip(texts, labels, strict=True)]
    encoded: dict[tuple[int, ...], dict] = {}

    def encode(indices: list[int]) -> dict[str, torch.Tensor]:
        if tuple(indices) not in encoded:  # tokenized once, outside the timed steps' comparison
            batch = tokenizer([texts[i] for i in indices], return_tensors="pt", padding=True)
            batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            encoded[tuple(indices)] = dict(batch)
        return encoded[tuple(indices)]

    return encode


def make_trainer_step(method: str, base, encode, length: int):
    """One step of `method` through the peft model's forward with labels; the floor: the frozen model on
    [a leaf prompt; the embedded row] with the prompt's labels -100."""
    from peft import PromptTuningConfig, get_peft_model

    from peft_softhard import SoftHardConfig

    base.requires_grad_(False)
    if method == "floor":
        prompt = base.get_input_embeddings().weight[:length].detach().clone().requires_grad_(True)

        def floor_step(indices):
            batch = encode(indices)
            rows = batch["input_ids"].shape[0]
            embeds = torch.cat([prompt.expand(rows, -1, -1), base.get_input_embeddings()(batch["input_ids"])], 1)
            mask = torch.cat([batch["attention_mask"].new_ones(rows, length), batch["attention_mask"]], 1)
            labels = torch.cat([batch["labels"].new_full((rows, length), -100), batch["labels"]], 1)
            prompt.grad = None
            base(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss.backward()

        return floor_step
    if method == "stock PROMPT_TUNING":
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=length)
    else:
        config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=length, mode=method, init="vocab")
    peft_model = get_peft_model(base, config)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=3e-3)

    def step(indices):
        optimizer.zero_grad()
        peft_model(**encode(indices)).loss.backward()
        optimizer.step()

    return step


def placed_rows(tokenizer, placement: str, rows: int = 256):
    """A function from example indices to a batch of SST-2 training rows for an adapter at `placement` (prefix:
    in front of the manual template; slot: its `{prompt}` before the answer cue; the same tokens otherwise),
    each followed by its label word, the only target."""
    from peft_softhard import SoftHardConfig, tokenize_with_prompt
    from peft_softhard.app.tasks import SST2

    texts, labels = SST2.load("train", limit=rows, seed=0, data_dir=str(SHARED / "data"))
    template = SLOT_TEMPLATE if placement == "slot" else SLOT_TEMPLATE.replace("{prompt}", "")
    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=1, placement=placement, template=template)
    targets = [SST2.label_words[y] for y in labels]
    encoded: dict[tuple[int, ...], dict] = {}

    def encode(indices: list[int]) -> dict[str, torch.Tensor]:
        if tuple(indices) not in encoded:  # tokenized once, outside the timed steps' comparison
            encoded[tuple(indices)] = dict(tokenize_with_prompt(tokenizer, config, [texts[i] for i in indices],
                                                                targets=[targets[i] for i in indices],
                                                                return_tensors="pt"))
        return encoded[tuple(indices)]

    return encode


def make_placed_step(method: str, base, encoders: dict, length: int):
    """One step of a "mode, placement" method through the peft model's forward with labels."""
    from peft import get_peft_model

    from peft_softhard import SoftHardConfig

    mode, placement = method.split(", ")
    template = SLOT_TEMPLATE if placement == "slot" else SLOT_TEMPLATE.replace("{prompt}", "")
    base.requires_grad_(False)
    config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=length, mode=mode, init="vocab",
                            placement=placement, template=template)
    peft_model = get_peft_model(base, config)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=3e-3)
    encode = encoders[placement]

    def step(indices):
        optimizer.zero_grad()
        peft_model(**encode(indices)).loss.backward()
        optimizer.step()

    return step


def batches(size: int, count: int, rows: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randperm(rows, generator=generator)[:size].tolist() for _ in range(count)]


def interleaved_step_times(make, rows: int, device: str, methods: list[str], batch: int, repeats: int):
    """Median seconds per step of each method (`make(method)` builds its step), the methods taking turns (a
    warm-up step each first)."""
    steps = {method: make(method) for method in methods}
    work = batches(batch, repeats + 1, rows)
    for method in methods:
        steps[method](work[0])
    times: dict[str, list[float]] = {method: [] for method in methods}
    for repeat, indices in enumerate(work[1:]):
        order = methods[repeat % len(methods):] + methods[: repeat % len(methods)]  # rotate who goes first
        for method in order:
            synchronize(device)
            started = time.perf_counter()
            steps[method](indices)
            synchronize(device)
            times[method].append(time.perf_counter() - started)
    return {method: statistics.median(values) for method, values in times.items()}


def peak_memory_mib(method: str, args) -> float:
    """Peak memory while a fresh process (model loaded) runs a few steps of `method`: RSS, or on a GPU the most
    GPU memory allocated."""
    command = [sys.executable, __file__, "--memory-of", method, "--plan", args.plan_name, "--device", args.device]
    command += ["--random-weights"] if args.random_weights else []
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"]


def memory_child(method: str, args) -> None:
    """Runs in a fresh process: the peak memory while stepping, loading's own peak excluded."""
    plan = PLANS[args.plan]
    base, tokenizer = load(args.plan == "tiny", args.random_weights, args.device)
    objective = sst2_objective(tokenizer)
    step = make_step(method, base, objective, 10)
    gpu = on_gpu(args.device)
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    for indices in batches(plan["batch"], plan["memory_steps"], objective.num_train):
        step(indices)
    peak = torch.cuda.max_memory_allocated() / 2**20 if gpu else _status_mib("VmHWM")
    print(json.dumps({"peak_mib": peak}))


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def markdown(main: dict, memory: dict, trainer: dict, sweep: list[dict], memory_name: str) -> str:
    floor_time, floor_memory = main["floor"], memory["floor"]
    lines = [f"| method | step time (s) | × floor | {memory_name} (MiB) | over floor (MiB) |", "|---|---|---|---|---|"]
    for method in METHODS:
        lines.append(f"| {method} | {main[method]:.4f} | {main[method] / floor_time:.3f} | {memory[method]:.0f} | "
                     f"{memory[method] - floor_memory:+.0f} |")
    lines += ["", "| through model(input_ids, attention_mask, labels) | step time (s) | × floor |", "|---|---|---|"]
    lines += [f"| {method} | {trainer[method]:.4f} | {trainer[method] / trainer['floor']:.3f} |" for method in METHODS]
    lengths = sorted({row["length"] for row in sweep})
    lines += ["", "| soft step (s) | " + " | ".join(f"{n} tokens" for n in lengths) + " |",
              "|---|" + "---|" * len(lengths)]
    for size in sorted({row["batch"] for row in sweep}):
        cells = [next(r["seconds"] for r in sweep if r["batch"] == size and r["length"] == n) for n in lengths]
        lines.append(f"| batch {size} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    options = parser(__doc__, RESULTS, quick_help="SmolLM2, fewer repeats")
    add_measurement_options(options)
    options.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: the child that measures one method
    options.add_argument("--plan", default="full", help=argparse.SUPPRESS)
    args = options.parse_args()
    if args.memory_of:
        memory_child(args.memory_of, args)
        return
    args.plan_name = plan_name(args)
    plan, started = dict(PLANS[args.plan_name]), time.time()
    if args.repeats:
        plan["repeats"] = plan["sweep_repeats"] = args.repeats
    torch.manual_seed(0)
    base, tokenizer = load(args.tiny, args.random_weights, args.device)
    objective = sst2_objective(tokenizer)
    rows, device = objective.num_train, str(base.device)
    main_times = interleaved_step_times(lambda m: make_step(m, base, objective, 10), rows, device, METHODS,
                                        plan["batch"], plan["repeats"])
    head = interleaved_step_times(lambda m: make_step(m, base, objective, 10), rows, device,
                                  ["floor", HEAD_EVERYWHERE], plan["batch"], plan["repeats"])
    encode = lm_rows(tokenizer)
    trainer_times = interleaved_step_times(lambda m: make_trainer_step(m, base, encode, 10), rows, device, METHODS,
                                           plan["batch"], plan["repeats"])
    encoders = {placement: placed_rows(tokenizer, placement) for placement in ("prefix", "slot")}
    placed = interleaved_step_times(lambda m: make_placed_step(m, base, encoders, 10), rows, device, PLACED,
                                    plan["batch"], plan["repeats"])
    memory = {method: peak_memory_mib(method, args) for method in METHODS}
    sweep = []
    for length in plan["lengths"]:
        for batch in plan["batches"]:
            seconds = interleaved_step_times(lambda m, n=length: make_step(m, base, objective, n), rows, device,
                                             ["soft"], batch, plan["sweep_repeats"])["soft"]
            sweep.append({"length": length, "batch": batch, "seconds": round(seconds, 5)})
    gpu = on_gpu(args.device)
    memory_key = "peak_cuda_allocated_mib" if gpu else "peak_rss_mib"
    table = markdown(main_times, memory, trainer_times, sweep, "peak GPU memory allocated" if gpu else "peak RSS")
    table += (f"\n\n| the floor's output head | step time (s) |\n|---|---|\n| at the read positions only "
              f"(logits_to_keep) | {head['floor']:.4f} |\n| at every position | {head[HEAD_EVERYWHERE]:.4f} |")
    table += ("\n\n| through model(**tokenize_with_prompt(...)) | prefix step (s) | slot step (s) | slot / prefix |\n"
              "|---|---|---|---|\n" + "\n".join(
                  f"| {mode} | {placed[f'{mode}, prefix']:.4f} | {placed[f'{mode}, slot']:.4f} | "
                  f"{placed[f'{mode}, slot'] / placed[f'{mode}, prefix']:.3f} |" for mode in ("soft", "hard")))
    print(table)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".md").write_text(table + "\n")
    model = "tiny-gpt2" if args.tiny else "smollm2-135m" + (" (random weights)" if args.random_weights else "")
    write_results(output, "training-step cost against the floor", started, plan=args.plan_name, model=model,
                  repeats=plan["repeats"], device=torch.cuda.get_device_name() if gpu else "cpu",
                  num_virtual_tokens=10, batch_size=plan["batch"],
                  step_seconds={m: round(t, 5) for m, t in main_times.items()},
                  ratio_to_floor={m: round(t / main_times["floor"], 3) for m, t in main_times.items()},
                  trainer_path_step_seconds={m: round(t, 5) for m, t in trainer_times.items()},
                  trainer_path_ratio_to_floor={m: round(t / trainer_times["floor"], 3)
                                               for m, t in trainer_times.items()},
                  **{memory_key: {m: round(v, 1) for m, v in memory.items()}}, length_batch_sweep=sweep,
                  output_head_step_seconds={"read positions only": round(head["floor"], 5),
                                            "every position": round(head[HEAD_EVERYWHERE], 5)},
                  placement_step_seconds={m: round(t, 5) for m, t in placed.items()},
                  slot_over_prefix={mode: round(placed[f"{mode}, slot"] / placed[f"{mode}, prefix"], 3)
                                    for mode in ("soft", "hard")})


if __name__ == "__main__":
    main()
