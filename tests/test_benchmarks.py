"""Smoke runs of the benchmark scripts on tiny inputs (the full runs are documented, not part of the suite)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from conftest import GPT2_TOKENIZER, REPO


def run_benchmark(name: str, tmp_path, *arguments: str) -> dict:
    output = tmp_path / f"{name}.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / f"{name}.py"), *arguments, "--output", str(output)],
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(output.read_text())


def test_exactness_benchmark_runs_and_reports_zero_difference_on_tiny_models(tmp_path):
    rows = run_benchmark("exactness", tmp_path, "--tiny-only")["rows"]
    assert len(rows) == 8 and all(row["max_abs_difference"] <= 1e-6 for row in rows)
    float32 = [row for row in rows if "bfloat16" not in row["model"]]
    assert all(row[f"{side}_padded_max_abs_difference"] <= 1e-5 for row in float32 for side in ("left", "right"))
    generating = [row for row in rows if row["task_type"] in ("CAUSAL_LM", "SEQ_2_SEQ_LM")]
    assert len(generating) == 5 and all(row["generation_same_tokens"] for row in generating)


def test_planted_benchmark_quick_run(tmp_path):
    summary = run_benchmark("planted", tmp_path, "--quick")["summary"]
    assert summary["pez"]["solved"] == "2/2" and summary["gcg"]["solved"] == "2/2"


def test_projection_benchmark_quick_run(tmp_path):
    (row,) = run_benchmark("projection", tmp_path, "--quick")["rows"]
    assert row["same_ids"] and row["chunked"]["seconds"] > 0


def test_memory_benchmark_quick_run(tmp_path):
    rows = run_benchmark("memory", tmp_path, "--quick")["rows"]
    assert [row["loop"] for row in rows] == ["project", "score"] and all(row["iterations"] == 100 for row in rows)


def test_mixed_batch_benchmark_tiny_run(tmp_path):
    results = run_benchmark("mixed_batch", tmp_path, "--tiny", "--work-dir", str(tmp_path / "work"))
    assert [row["tasks"] for row in results["throughput"]] == [1, 2, 4, 8]
    assert all(row["mixed_one_forward_examples_per_second"] > 0 for row in results["throughput"])
    assert results["max_abs_logit_difference"]["mixed_vs_alone"] < 1e-4
    assert set(results["ensemble"]["members"]) == {"soft0", "soft1", "soft2", "pez"}
    assert set(results["ensemble"]["ensemble"]) == {"mean", "vote"}


def test_cost_benchmark_tiny_run(tmp_path):
    results = run_benchmark("cost", tmp_path, "--tiny", "--repeats", "1")
    assert results["repeats"] == 1 and results["device"] == "cpu"
    assert set(results["ratio_to_floor"]) == {"floor", "soft", "hard", "stock PROMPT_TUNING"}
    assert results["ratio_to_floor"]["floor"] == 1.0 and all(v > 0 for v in results["step_seconds"].values())
    assert set(results["trainer_path_ratio_to_floor"]) == set(results["ratio_to_floor"])
    assert all(v > 0 for v in results["trainer_path_step_seconds"].values())
    assert len(results["length_batch_sweep"]) == 4 and all(v > 0 for v in results["peak_rss_mib"].values())


def test_random_weights_need_only_the_config_and_the_tokenizer(tmp_path, monkeypatch):
    """What `--random-weights` loads on a machine without the model package (the GPU cost records)."""
    import transformers

    from peft_softhard.testing import tiny_llama

    folder = tmp_path / "smollm2-135m"
    tiny_llama().save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(str(GPT2_TOKENIZER)).save_pretrained(folder)
    saved = transformers.AutoModelForCausalLM.from_pretrained(folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    monkeypatch.setenv("PEFT_SOFTHARD_CACHE", str(tmp_path))
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import subjects

    model, tokenizer = subjects.load(tiny=False, random_weights=True)
    assert type(model) is type(saved) and model.config.num_hidden_layers == saved.config.num_hidden_layers
    assert not torch.equal(model.get_input_embeddings().weight, saved.get_input_embeddings().weight)
    assert tokenizer.pad_token == tokenizer.eos_token  # GPT-2 has none: the end-of-text token pads


def test_evaluation_benchmark_tiny_run(tmp_path):
    results = run_benchmark("evaluation", tmp_path, "--tiny")["results"]
    assert len(results) == 6 and all(row["same_predictions"] for row in results)
    assert all(row["examples_per_second"] > 0 for row in results)


def test_quality_benchmark_tiny_run(tmp_path):
    arguments = ["--tiny", "--work-dir", str(tmp_path / "work"), "--images", str(tmp_path / "images")]
    results = run_benchmark("quality", tmp_path, *arguments)
    assert results["missing"] == []
    records = results["records"]
    methods = {(row["task"], row["method"]) for row in results["summary"]}
    assert methods == {(task, m) for task in ("sst2", "ag_news")
                       for m in ("template", "manual", "soft", "discover", "gcg", "pez_reference", "lora")}
    assert all(0.0 <= r["eval"] <= 1.0 and 0.0 <= r["validation"] <= 1.0 for r in records.values())
    assert {Path(p).name for p in results["images"]} == {
        "quality_sst2_examples_tiny.png", "quality_sst2_search_tiny.png", "quality_ag_news_examples_tiny.png"}
    # a larger budget continues the smaller one's run: its history starts with the smaller run's
    short, longer = records["sst2-discover-seed0-8"], records["sst2-discover-seed0-16"]
    assert (short["steps"], longer["steps"]) == (2, 4)
    assert longer["score_history"][:len(short["score_history"])] == short["score_history"]
    assert longer["validation"] >= short["validation"]  # the best of more steps, on the same validation rows
    assert records["sst2-soft-seed0-24"]["steps"] == 6 and records["sst2-soft-seed1-16"]["seed"] == 1
    gcg = records["sst2-gcg-seed0-8"]
    assert gcg["search_seconds"] >= short["search_seconds"]  # GCG ran (at least) discover's wall time
    assert all("transfer" in records[f"sst2-{m}-seed0-16"] for m in ("discover", "gcg", "pez_reference"))
    again = run_benchmark("quality", tmp_path, *arguments)  # every stage done: the rerun only reports
    assert again["records"] == records


def test_settings_benchmark_tiny_run(tmp_path):
    records = run_benchmark("settings", tmp_path, "--tiny", "--work-dir", str(tmp_path / "work"))["records"]
    trained = [r for r in records if r["row"] != "manual template alone"]
    assert len(trained) == 11 and all(0 <= r["eval"] <= 1 for r in records)
    for record in trained:  # step 0 is scored, so the chosen step is never worse on validation than the start
        assert record["score_history"][0][0] == 0 and record["validation"] >= record["score_history"][0][1]


def test_pez_reference_benchmark_tiny_run(tmp_path):
    work = tmp_path / "work"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "pez_reference.py"), "--tiny", "--steps", "4",
                             "--work-dir", str(work)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    record = json.loads((work / "tiny" / "pez_reference.json").read_text())
    assert "--preset" in record["command"] and [step for step, _ in record["score_history"]] == [0, 2, 4]
    assert 0 <= record["eval"]["accuracy"] <= 1
