"""Load: does projecting or scoring many prompts in a loop leak memory? RSS over 1,000 iterations.

Each loop runs in a fresh process on SmolLM2-135M (a tiny model with --quick): `project_prompt` (top-1) of a
10-token soft prompt, and held-out scoring of a 10-token hard prompt (4 short rows each time), with a
new random prompt every iteration. RSS is sampled every 50 iterations; a leak shows as steady growth after
the first warm-up iterations.

    python benchmarks/memory.py              # 1,000 iterations each on SmolLM2 (~15 min)
    python benchmarks/memory.py --quick      # 100 iterations each on a tiny model

Writes benchmarks/results/memory.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from reporting import write_results

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def loop(kind: str, iterations: int, tiny: bool) -> dict:
    """Runs in a child process."""
    import torch
    from peft import get_peft_model

    from peft_softhard import ClassificationObjective, SoftHardConfig, project_prompt
    from peft_softhard.app.models import load_model

    if tiny:
        import transformers
        from subjects import SHARED

        from peft_softhard.testing import build, tiny_gpt2

        tokenizer = transformers.AutoTokenizer.from_pretrained(str(SHARED / "models" / "gpt2-tokenizer"))
        model = build(tiny_gpt2)
    else:
        model, tokenizer = load_model("smollm2-135m")
    texts = [f"review number {i} : a {'good' if i % 2 else 'bad'} film" for i in range(4)]
    objective = ClassificationObjective(tokenizer, texts, [i % 2 for i in range(4)], template="{text} It was",
                                        label_words=[" bad", " good"], held_out_texts=texts,
                                        held_out_labels=[i % 2 for i in range(4)])
    peft_model = get_peft_model(model, SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=10, mode="soft"))
    vectors = peft_model.prompt_encoder["default"].embedding.weight
    vocab = model.get_input_embeddings().num_embeddings
    samples, started = [], time.time()
    for iteration in range(1, iterations + 1):
        with torch.no_grad():
            vectors.copy_(torch.randn_like(vectors) * 0.05)
            if kind == "project":
                project_prompt(peft_model, tokenizer)
            else:
                objective.score(model, torch.randint(0, vocab, (10,)))
        if iteration == 1 or iteration % 50 == 0:
            samples.append((iteration, round(rss_mib(), 1)))
    return {"samples": samples, "seconds": round(time.time() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 iterations on a tiny model")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        print(json.dumps(loop(arguments.child[0], int(arguments.child[1]), arguments.child[2] == "tiny")))
        return
    iterations = 100 if arguments.quick else arguments.iterations
    model = "tiny" if arguments.quick else "smollm2"
    started, rows = time.time(), []
    for kind in ("project", "score"):
        child = subprocess.run([sys.executable, __file__, "--child", kind, str(iterations), model],
                               capture_output=True, text=True, check=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        samples = result["samples"]
        warm = samples[min(2, len(samples) - 1)][1]  # after the first 100 iterations (allocator warm-up)
        rows.append({"loop": kind, "iterations": iterations, "rss_first_MiB": samples[0][1],
                     "rss_after_warmup_MiB": warm, "rss_last_MiB": samples[-1][1],
                     "growth_after_warmup_MiB": round(samples[-1][1] - warm, 1), "samples": samples,
                     "seconds": result["seconds"]})
    output = write_results(arguments.output, f"RSS while projecting / scoring new prompts ({model})", started,
                           model=model, rows=rows)
    print("| loop | iterations | RSS first (MiB) | after 100 | last | growth after warm-up | seconds |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['loop']} | {row['iterations']} | {row['rss_first_MiB']} | {row['rss_after_warmup_MiB']} "
              f"| {row['rss_last_MiB']} | {row['growth_after_warmup_MiB']} | {row['seconds']} |")
    print(f"\nwritten to {arguments.output} in {output['seconds']} s")


if __name__ == "__main__":
    main()
