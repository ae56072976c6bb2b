"""Planted problems: how fast PEZ, projected SGD and GCG find a prompt with a known answer.

The model (peft_softhard.testing.bigram_llama) produces a 3-token target right after a prompt exactly when
the prompt ends in one planted token out of ~1,000. Each method runs with the same step budget; we record
whether and when (steps, seconds) its projected prompt first produced the target, over several planted keys.

    python benchmarks/planted.py            # about a minute
    python benchmarks/planted.py --quick    # 2 keys

Writes benchmarks/results/planted.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from reporting import write_results

from peft_softhard import DiscoveryConfig, SoftHardConfig, TargetTextObjective, run
from peft_softhard.testing import bigram_llama

RESULTS = Path(__file__).resolve().parent / "results" / "planted.json"
STEPS = 100
METHODS = {
    "pez": {"lr": 0.1},
    "psgd": {"lr": 0.1},
    "gcg": {"gcg_top_k": 16, "gcg_candidates": 32},
}


def first_hit(model, objective, method: str, seed: int) -> dict:
    """Run one method, scoring every step, and report when the target was first produced."""
    config = DiscoveryConfig(method=method, steps=STEPS, batch_size=1, eval_interval=1, seed=seed,
                             show_progress=False, **METHODS[method])
    prompt = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=3, mode="hard")
    result = run(model, objective, config, prompt)
    hits = [step for step, score in result.score_history if score == 1.0]
    seconds_per_step = result.seconds / result.steps
    return {
        "solved": bool(hits),
        "steps_to_target": hits[0] if hits else None,
        "seconds_to_target": round(hits[0] * seconds_per_step, 3) if hits else None,
        "seconds_per_step": round(seconds_per_step, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 planted keys instead of 8")
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    keys = [100, 500] if arguments.quick else [100, 200, 300, 400, 500, 600, 700, 800]
    model, successor = bigram_llama()
    started = time.time()
    runs = {method: [] for method in METHODS}
    for index, key in enumerate(keys):
        target = [int(successor[key]), int(successor[successor[key]]), int(successor[successor[successor[key]]])]
        objective = TargetTextObjective(None, target)
        for method in METHODS:
            torch.manual_seed(index)
            runs[method].append({"key": key, **first_hit(model, objective, method, seed=index)})
    summary = {}
    for method, results in runs.items():
        solved = [r for r in results if r["solved"]]
        summary[method] = {
            "solved": f"{len(solved)}/{len(results)}",
            "median_steps_to_target": statistics.median(r["steps_to_target"] for r in solved) if solved else None,
            "median_seconds_to_target": statistics.median(r["seconds_to_target"] for r in solved) if solved else None,
            "seconds_per_step": statistics.median(r["seconds_per_step"] for r in results),
        }
    output = write_results(
        arguments.output,
        f"steps and seconds until the projected prompt produces the planted target (budget {STEPS} steps)",
        started, summary=summary, runs=runs,
    )
    print("| method | solved | median steps to target | median seconds to target | seconds/step |")
    print("|---|---|---|---|---|")
    for method, row in summary.items():
        print(f"| {method} | {row['solved']} | {row['median_steps_to_target']} | {row['median_seconds_to_target']} "
              f"| {row['seconds_per_step']} |")
    print(f"\nwritten to {arguments.output} in {output['seconds']} s")


if __name__ == "__main__":
    main()
