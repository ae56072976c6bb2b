"""The PEZ reference language-model setting on SmolLM2-135M and SST-2, run through `softhard discover
--preset pez-reference` (Adafactor, constant lr 0.3, clip 1.0, batches of 16, label-word init, the task's
own template `{text} . It was`), resumable: run it again and it continues from its checkpoint.

The reference scores 5,000 held-out train rows every 100 steps; on 2 CPU cores that alone would take about
8 minutes a time, so the default here holds out 1,000 rows (whole sentences) and scores every 250
steps. `--reference-selection` uses the reference's 5,000 rows every 100 steps (for a GPU or a long night); the
model runs on a GPU when torch sees one (`--device`).
The eval split (SST-2 dev, 872 rows) is scored once, by the chosen prompt.

    python benchmarks/pez_reference.py                 # 5,000 steps; about 4-5 hours on 2 cores, resumable
    python benchmarks/pez_reference.py --steps 1000    # a smaller budget, same checkpoint folder layout
    python benchmarks/pez_reference.py --tiny          # a tiny random GPT-2 (smoke run)

Writes benchmarks/results/pez_reference.json (with the wall time of this sitting and of the run).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

from reporting import write_results
from subjects import RUN_STATE, SHARED, checkpoint_on_kill, parser

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "pez_reference.json"


def main() -> None:
    options = parser(__doc__.split("\n\n")[0], RESULTS, "unused")
    options.add_argument("--steps", type=int, default=5000)
    options.add_argument("--reference-selection", action="store_true",
                         help="the reference's 5,000 validation rows, scored every 100 steps")
    options.add_argument("--device", default="auto", help="where the model runs (default: a GPU when there is one)")
    options.add_argument("--work-dir", default=str(RUN_STATE / "pez_reference"),
                         help="the run's checkpoint (resumable; the full run's is committed)")
    args = options.parse_args()
    checkpoint_on_kill()
    from peft_softhard.app.cli import main as softhard

    started = time.time()
    # steps5000/ holds the run begun under SST-2's earlier validation rows (10+ words, phrases included), stopped
    # at step 1,399: resuming it with today's rows (whole sentences) would mix two selection sets
    work = Path(args.work_dir) / ("tiny" if args.tiny else f"sentences-steps{args.steps}")
    selection = [] if args.reference_selection else ["--validation-rows", "1000", "--eval-interval", "250"]
    if args.tiny:
        from subjects import load

        model, tokenizer = load(tiny=True)
        model.save_pretrained(work / "tiny-model")
        tokenizer.save_pretrained(work / "tiny-model")
        selection = ["--validation-rows", "8", "--eval-interval", "2", "--max-train", "32", "--max-eval", "16",
                     "--batch-size", "4", "--model", str(work / "tiny-model")]
    argv = ["discover", "--preset", "pez-reference", "--task", "sst2", "--steps", str(args.steps),
            "--data-dir", str(SHARED / "data"), "--output-dir", str(work), "--resume", "--json",
            "--device", args.device, *selection]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = softhard(argv)
    if code:
        raise SystemExit(code)
    result = json.loads(out.getvalue())
    output = work / "pez_reference.json" if args.tiny else Path(args.output)  # a smoke run keeps the record
    write_results(output, "PEZ reference preset (SmolLM2-135M, SST-2)", started, command=argv,
                  text=result["text"], token_ids=result["token_ids"], validation_accuracy=result["validation_accuracy"],
                  start_validation_accuracy=result["start_validation_accuracy"], best_step=result["best_step"],
                  eval=result["eval"], run_seconds=round(result["seconds"], 1),
                  score_history=result["score_history"])
    print(json.dumps({k: result[k] for k in ("text", "validation_accuracy", "best_step", "eval")}, indent=1))


if __name__ == "__main__":
    main()
