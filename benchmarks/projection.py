"""Projection throughput and peak memory at today's vocabulary sizes: chunked (ours) versus naive.

For each synthetic embedding matrix (V tokens x d, float32) we project 20 prompt vectors to their nearest
token (cosine) with `nearest_tokens` and with the naive one-liner that normalises the whole matrix at once,
each in a fresh process, and record the seconds and the peak memory added on top of the matrix itself (RSS;
on a GPU, GPU memory allocated).

    python benchmarks/projection.py            # 50k x 768, 150k x 4096, 262k x 2048, 262k x 4096 (~3 min)
    python benchmarks/projection.py --quick    # 50k x 768 only
    python benchmarks/projection.py --device cuda --output benchmarks/results/projection_h100.json

Writes benchmarks/results/projection.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from reporting import write_results
from subjects import on_gpu

RESULTS = Path(__file__).resolve().parent / "results" / "projection.json"
SIZES = [(50_257, 768), (151_936, 4096), (262_144, 2048), (262_144, 4096)]
VECTORS = 20


def measure(vocab: int, dim: int, method: str, device: str) -> dict:
    """Runs in a child process: build the matrix, note the memory, project, note the peak."""
    import torch
    import torch.nn.functional as F

    from peft_softhard.method.projection import nearest_tokens

    torch.manual_seed(0)
    embedding = torch.nn.Embedding(vocab, dim, device=device)
    with torch.no_grad():
        embedding.weight.normal_(0, 0.02)
    vectors = torch.randn(VECTORS, dim, device=device) * 0.02

    def project() -> list[int]:
        with torch.no_grad():
            if method == "chunked":
                ids, _ = nearest_tokens(vectors, embedding, metric="cosine")
            else:
                scores = F.normalize(vectors, dim=-1) @ F.normalize(embedding.weight, dim=-1).T
                ids = scores.argmax(-1, keepdim=True)
        return ids[:3, 0].tolist()  # a list: waits for the GPU

    gpu = on_gpu(device)
    if gpu:
        project()  # untimed: the first products load kernels and set up cuBLAS
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if gpu else _peak_rss_bytes()
    started = time.perf_counter()
    first_ids = project()
    seconds = time.perf_counter() - started
    peak = torch.cuda.max_memory_allocated() if gpu else _peak_rss_bytes()
    return {"seconds": round(seconds, 4), "peak_extra_MiB": round((peak - before) / 2**20, 1),
            "matrix_MiB": round(vocab * dim * 4 / 2**20, 1), "first_ids": first_ids}


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the 50k x 768 matrix")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--device", default="cpu", help="where the matrix lives: cpu (default) or cuda")
    parser.add_argument("--child", nargs=3, metavar=("VOCAB", "DIM", "METHOD"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        vocab, dim, method = int(arguments.child[0]), int(arguments.child[1]), arguments.child[2]
        print(json.dumps(measure(vocab, dim, method, arguments.device)))
        return

    started = time.time()
    rows = []
    for vocab, dim in SIZES[:1] if arguments.quick else SIZES:
        row = {"vocab": vocab, "dim": dim}
        for method in ("chunked", "naive"):
            child = subprocess.run([sys.executable, __file__, "--child", str(vocab), str(dim), method,
                                    "--device", arguments.device], capture_output=True, text=True, check=True)
            row[method] = json.loads(child.stdout.strip().splitlines()[-1])
        row["same_ids"] = row["chunked"]["first_ids"] == row["naive"]["first_ids"]
        rows.append(row)
    output = write_results(arguments.output, f"nearest token (cosine) of {VECTORS} vectors; peak memory added "
                           "beyond the matrix", started, rows=rows, device=arguments.device)
    print("| vocabulary x dim | matrix MiB | chunked s | chunked extra MiB | naive s | naive extra MiB | same ids |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        c, n = row["chunked"], row["naive"]
        print(f"| {row['vocab']:,} x {row['dim']} | {c['matrix_MiB']:,} | {c['seconds']} | {c['peak_extra_MiB']:,} "
              f"| {n['seconds']} | {n['peak_extra_MiB']:,} | {row['same_ids']} |")
    print(f"\nwritten to {arguments.output} in {output['seconds']} s")


if __name__ == "__main__":
    main()
