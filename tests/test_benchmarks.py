"""Smoke runs of the benchmark scripts on tiny inputs (the full runs are documented, not part of the suite).

The scripts a test names with `@pytest.mark.benchmark_runs(...)` run once for the module, all in one
Python process (tests/benchmark_runner.py), and each test reads its script's results file.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import GPT2_TOKENIZER, REPO

QUALITY = ["--tiny", "--work-dir", "{tmp}/quality-work", "--images", "{tmp}/images"]
# run name: (script, arguments); "{tmp}" is the module's folder. Runs go in this order ("quality-again"
# reruns a finished quality run).
RUNS = {
    "exactness": ("exactness", ["--tiny-only"]),
    "planted": ("planted", ["--quick"]),
    "projection": ("projection", ["--quick"]),
    "memory": ("memory", ["--quick"]),
    "mixed_batch": ("mixed_batch", ["--tiny", "--work-dir", "{tmp}/mixed-work"]),
    "cost": ("cost", ["--tiny", "--repeats", "1"]),
    "evaluation": ("evaluation", ["--tiny"]),
    "quality": ("quality", QUALITY),
    "quality-again": ("quality", QUALITY),
    "settings": ("settings", ["--tiny", "--work-dir", "{tmp}/settings-work"]),
    "pez_reference": ("pez_reference", ["--tiny", "--steps", "4", "--work-dir", "{tmp}/pez-work"]),
    "new_task": ("new_task", ["--tiny", "--work-dir", "{tmp}/new-task-work"]),
    "style": ("style", ["--tiny", "--work-dir", "{tmp}/style-work"]),
    "chat_format": ("chat_format", ["--tiny", "--work-dir", "{tmp}/chat-work"]),
    "demo_settings": ("demo_settings", ["--tiny", "--task", "sst2", "--only", "default", "--work-dir",
                                        "{tmp}/demo-settings-work"]),
}


@pytest.fixture(scope="module")
def benchmark_results(request, tmp_path_factory):
    """Runs the scripts the selected tests of this module ask for; returns the folder of their outputs."""
    wanted = {name for item in request.session.items if getattr(item, "module", None) is request.module
              for marker in item.iter_markers("benchmark_runs") for name in marker.args}
    folder = tmp_path_factory.mktemp("benchmarks")
    runs = []
    for name, (script, arguments) in RUNS.items():
        if name in wanted:
            arguments = [a.replace("{tmp}", str(folder)) for a in arguments]
            runs.append([script, [*arguments, "--output", str(folder / f"{name}.json")], str(folder / f"{name}.error")])
    (folder / "runs.json").write_text(json.dumps(runs))
    done = subprocess.run([sys.executable, str(REPO / "tests" / "benchmark_runner.py"), str(folder / "runs.json")],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr
    return folder


def is_accuracy_on(value: float, rows: int) -> bool:
    """Whether `value` (rounded to 4 places) is a share of `rows` rows: right answers counted, not made up."""
    return abs(round(value * rows) / rows - value) < 1e-4 and 0 <= round(value * rows) <= rows


def results_of(folder: Path, name: str, written: Path | None = None) -> dict:
    """What run `name` wrote (to its `--output`, or to `written`); its traceback as the failure if it failed."""
    error = folder / f"{name}.error"
    assert not error.exists(), error.read_text()
    return json.loads((written or folder / f"{name}.json").read_text())


@pytest.mark.benchmark_runs("exactness")
def test_exactness_benchmark_runs_and_reports_zero_difference_on_tiny_models(benchmark_results):
    rows = results_of(benchmark_results, "exactness")["rows"]
    assert len(rows) == 8 and all(row["max_abs_difference"] <= 1e-6 for row in rows)
    float32 = [row for row in rows if "bfloat16" not in row["model"]]
    assert all(row[f"{at}{side}_padded_max_abs_difference"] <= 1e-5 for row in float32 for side in ("left", "right")
               for at in ("", "slot_"))  # the prompt in front, and at a slot inside each row
    generating = [row for row in rows if row["task_type"] in ("CAUSAL_LM", "SEQ_2_SEQ_LM")]
    assert len(generating) == 5 and all(row[f"{at}generation_same_tokens"] for row in generating
                                        for at in ("", "slot_"))


@pytest.mark.benchmark_runs("planted")
def test_planted_benchmark_quick_run(benchmark_results):
    summary = results_of(benchmark_results, "planted")["summary"]
    assert summary["pez"]["solved"] == "2/2" and summary["gcg"]["solved"] == "2/2"


@pytest.mark.benchmark_runs("projection")
def test_projection_benchmark_quick_run(benchmark_results):
    (row,) = results_of(benchmark_results, "projection")["rows"]
    assert row["same_ids"] and row["chunked"]["first_ids"] == row["naive"]["first_ids"]


@pytest.mark.benchmark_runs("memory")
def test_memory_benchmark_quick_run(benchmark_results):
    rows = results_of(benchmark_results, "memory")["rows"]
    assert [row["loop"] for row in rows] == ["project", "score"] and all(row["iterations"] == 100 for row in rows)


@pytest.mark.benchmark_runs("mixed_batch")
def test_mixed_batch_benchmark_tiny_run(benchmark_results):
    results = results_of(benchmark_results, "mixed_batch")
    assert [row["tasks"] for row in results["throughput"]] == [1, 2, 4, 8]
    assert all(row["speedup"] == round(row["mixed_examples_per_second"] / row["separate_examples_per_second"], 2)
               for row in results["throughput"])
    assert results["max_abs_logit_difference"]["mixed_vs_alone"] < 1e-4
    assert set(results["ensemble"]["members"]) == {"soft0", "soft1", "soft2", "pez"}
    assert set(results["ensemble"]["ensemble"]) == {"mean", "vote"}


@pytest.mark.benchmark_runs("cost")
def test_cost_benchmark_tiny_run(benchmark_results):
    results = results_of(benchmark_results, "cost")
    assert results["repeats"] == 1 and results["device"] == "cpu"
    assert set(results["ratio_to_floor"]) == {"floor", "soft", "hard", "stock PROMPT_TUNING"}
    for seconds, ratios in (("step_seconds", "ratio_to_floor"), ("trainer_path_step_seconds",
                                                                  "trainer_path_ratio_to_floor")):
        steps = results[seconds]  # each method's step over the floor's (both rounded in the file)
        assert all(abs(results[ratios][k] - v / steps["floor"]) < 2e-3 for k, v in steps.items())
    assert len(results["length_batch_sweep"]) == 4 and set(results["peak_rss_mib"]) == set(results["step_seconds"])
    assert set(results["output_head_step_seconds"]) == {"read positions only", "every position"}
    placed = results["placement_step_seconds"]
    assert set(placed) == {"soft, prefix", "soft, slot", "hard, prefix", "hard, slot"}
    assert all(abs(results["slot_over_prefix"][mode] - placed[f"{mode}, slot"] / placed[f"{mode}, prefix"]) < 2e-3
               for mode in ("soft", "hard"))


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


@pytest.mark.benchmark_runs("evaluation")
def test_evaluation_benchmark_tiny_run(benchmark_results):
    results = results_of(benchmark_results, "evaluation")["results"]
    assert len(results) == 6 and all(row["same_predictions"] for row in results)
    naive = {row["prompt"]: row["examples_per_second"] for row in results if row["way"] == "naive"}
    assert all(row["speedup"] == round(row["examples_per_second"] / naive[row["prompt"]], 2) for row in results)


@pytest.mark.benchmark_runs("quality", "quality-again")
def test_quality_benchmark_tiny_run(benchmark_results):
    results = results_of(benchmark_results, "quality")
    assert results["missing"] == []
    records = results["records"]
    methods = {(row["task"], row["method"]) for row in results["summary"]}
    assert methods == {(task, m) for task in ("sst2", "ag_news")
                       for m in ("template", "manual", "soft", "discover", "gcg", "pez_reference", "lora", "whole",
                                 "labels", "grow", "edits", *(f"{kind}@{at}" for kind in ("soft", "discover", "gcg")
                                                              for at in ("before_answer_cue", "end")))
                       } | {("sst2", "refine"), ("sst2", "distill")}
    assert all(is_accuracy_on(r["eval"], r["eval_rows"]) for r in records.values())
    assert {Path(p).name for p in results["images"]} == {
        "quality_sst2_examples_tiny.png", "quality_sst2_search_tiny.png", "quality_ag_news_examples_tiny.png"}
    # a larger budget continues the smaller one's run: its history starts with the smaller run's
    short, longer = records["sst2-discover-seed0-8"], records["sst2-discover-seed0-16"]
    assert (short["steps"], longer["steps"]) == (2, 4)
    assert longer["score_history"][:len(short["score_history"])] == short["score_history"]
    assert longer["validation"] >= short["validation"]  # the best of more steps, on the same validation rows
    assert records["sst2-soft-seed1-24"]["steps"] == 6 and records["sst2-soft-seed1-16"]["seed"] == 1
    gcg = records["sst2-gcg-seed0-8"]
    assert gcg["search_seconds"] >= short["search_seconds"]  # GCG ran (at least) discover's wall time
    assert all("transfer" in records[f"sst2-{m}-seed0-16"] for m in ("discover", "gcg", "pez_reference"))
    # refine starts at discover's prompt and runs for discover's seconds again; both count in its record
    refine, discover = records["sst2-refine-seed0-16"], records["sst2-discover-seed0-16"]
    assert refine["score_history"][0][1] == discover["validation"] and refine["validation"] >= discover["validation"]
    assert refine["search_seconds"] >= 2 * discover["search_seconds"] and refine["steps"] > discover["steps"]
    # distill imitates soft's chosen prompt at the same budget, starting from it; soft's examples count too
    distill, soft = records["sst2-distill-seed0-16"], records["sst2-soft-seed0-16"]
    assert distill["steps"] == soft["steps"] + 4 and distill["run"] == "sst2-distill-seed0"
    paired = {(r["task"], r["method"], r["budget"], r["seed"]): r for r in results["against_manual"]}
    assert ("sst2", "template", 0, 0) in paired and ("ag_news", "discover", 16, 0) in paired
    assert all(r["interval_95"][0] <= r["minus_manual"] <= r["interval_95"][1] for r in paired.values())
    difference = records["sst2-discover-seed0-16"]["eval"] - records["sst2-manual-seed0-0"]["eval"]
    assert abs(paired["sst2", "discover", 16, 0]["minus_manual"] - difference) < 2e-4
    whole = records["sst2-whole-seed0-16"]  # discover's default starts at the manual prompt, never ends below it
    assert whole["validation"] >= whole["start_validation"] == records["sst2-manual-seed0-0"]["validation"]
    assert "{text}" in whole["text"] and len(whole["label_words"]) == 2 and "transfer" in whole
    again = results_of(benchmark_results, "quality-again")  # every stage done: the rerun only reports
    assert again["records"] == records


@pytest.mark.benchmark_runs("settings")
def test_settings_benchmark_tiny_run(benchmark_results):
    records = results_of(benchmark_results, "settings")["records"]
    trained = [r for r in records if r["row"] != "manual template alone"]
    assert len(trained) == 11
    for record in trained:  # step 0 is scored, so the chosen step is never worse on validation than the start
        assert record["score_history"][0][0] == 0 and record["validation"] >= record["score_history"][0][1]


@pytest.mark.benchmark_runs("pez_reference")
def test_pez_reference_benchmark_tiny_run(benchmark_results):
    tiny_record = benchmark_results / "pez-work" / "tiny" / "pez_reference.json"  # a smoke run keeps it there
    record = results_of(benchmark_results, "pez_reference", tiny_record)
    assert "--preset" in record["command"] and [step for step, _ in record["score_history"]] == [0, 2, 4]
    assert is_accuracy_on(record["eval"]["accuracy"], record["eval"]["examples"])


@pytest.mark.benchmark_runs("new_task")
def test_new_task_benchmark_tiny_run(benchmark_results):
    results = results_of(benchmark_results, "new_task")
    zero, found, trained = results["zero_shot"], results["discover"], results["train"]
    assert all(is_accuracy_on(run["accuracy"], 16) for run in (zero, found, trained))  # the 16 test rows
    assert found["validation"] >= found["start_validation"]  # step 0 is scored: never worse than the start
    aim = results["aim"]
    assert results["aim_reached"] == {
        "discover_seconds": found["wall_seconds"] <= aim["discover_seconds"],
        "discover_minus_zero_shot": found["accuracy"] - zero["accuracy"] >= aim["discover_minus_zero_shot"],
        "train_minus_discover": trained["accuracy"] - found["accuracy"] <= aim["train_minus_discover"]}
    with open(benchmark_results / "new-task-work" / "data" / "test.csv", newline="") as handle:  # the user's file
        labels = [row["label"] for row in csv.DictReader(handle)]
    assert sorted(labels) == sorted(["0", "1", "2", "3"] * 4)  # class-balanced, labels 0-3 as the CLI reads them


@pytest.mark.benchmark_runs("demo_settings")
def test_demo_settings_benchmark_tiny_run(benchmark_results):
    rows = {row["setting"]: row for row in results_of(benchmark_results, "demo_settings")["rows"]}
    assert set(rows) == {"manual template alone", "default"}
    searched, manual = rows["default"], rows["manual template alone"]
    assert searched["start"] == manual["validation"]  # the search starts from the manual prompt
    assert searched["validation"] >= searched["start"]  # and never returns one worse on validation
    assert [stage["stage"] for stage in searched["stages"]] == ["label_words", "tokens", "template_edits"]
    if not any(stage["kept"] for stage in searched["stages"]):  # nothing won: the manual prompt, judged the same
        assert searched["settings_rows"] == manual["settings_rows"]


def test_demo_settings_compares_settings_on_rows_the_demo_never_sees(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from demo_settings import settings_rows

    from peft_softhard.app.tasks import SST2, load_task_data

    data = load_task_data(SST2, 1000, 8, 0, None, 150)  # the demo's training and validation rows
    judged = settings_rows(data, 600)
    texts = judged.validation[0]
    assert len(texts) == 600 == len(set(texts))
    assert not set(texts) & (set(data.train[0]) | set(data.validation[0]))
    assert all(text.rstrip().endswith((".", "!", "?")) for text in texts)  # whole sentences, as validation's
    assert judged.train == data.train and judged.evaluation == data.evaluation


def test_quality_report_keeps_the_comparison_of_a_record_restored_without_predictions(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from quality import against_manual

    labels = {"sst2": [1, 0, 1, 1]}
    base = {"task": "sst2", "seed": 0}
    records = {
        "sst2-manual-seed0-0": {**base, "method": "manual", "budget": 0, "eval_predictions": [1, 1, 1, 1]},
        "sst2-soft-seed0-8": {**base, "method": "soft", "budget": 8, "eval_predictions": [1, 0, 1, 0]},
        # restored from the results JSON: no predictions, the comparison made when it had them
        "sst2-discover-seed0-8": {**base, "method": "discover", "budget": 8, "minus_manual": 0.123,
                                  "interval_95": [0.01, 0.2]},
        "sst2-gcg-seed0-8": {**base, "method": "gcg", "budget": 8},  # neither: left out
    }
    paired = {r["method"]: r for r in against_manual(records, labels)}
    assert set(paired) == {"soft", "discover"}
    assert paired["soft"]["minus_manual"] == 0.0  # both right on 3 of 4 rows
    assert (paired["discover"]["minus_manual"], paired["discover"]["interval_95"]) == (0.123, [0.01, 0.2])


@pytest.mark.benchmark_runs("style")
def test_style_benchmark_tiny_run(benchmark_results):
    results = results_of(benchmark_results, "style")
    records = results["records"]
    rows = {(r["corpus"], r["method"], r["budget"]) for r in records.values()}
    assert rows == {(c, m, 0) for c in ("reviews", "news") for m in ("none", "instruction")} | {
        (c, m, b) for c in ("reviews", "news") for m in ("soft10", "soft50", "hard", "lora") for b in (4, 8)}
    assert all(r["report_perplexity"] > 1 and r["other_corpus_perplexity"] > 1 for r in records.values())
    none = records["reviews-none-0"]
    assert none["other_corpus_perplexity"] == records["news-none-0"]["report_perplexity"]  # the same documents
    longer, short = records["reviews-soft10-8"], records["reviews-soft10-4"]
    assert (short["steps"], longer["steps"]) == (2, 4) and longer["validation_perplexity"] <= short[
        "validation_perplexity"]  # the 8-chunk run continues the 4-chunk one: the best of more steps
    assert set(results["helps_own_corpus_more"]) == {k for k, r in records.items() if r["method"] != "none"}
    assert set(results["samples"]) == {"no prompt", "reviews soft10", "reviews hard", "news soft10", "news hard"}


@pytest.mark.benchmark_runs("chat_format")
def test_chat_format_benchmark_tiny_run(benchmark_results):
    results = results_of(benchmark_results, "chat_format")
    records = results["records"]
    assert list(records) == ["none", "hand-written", "soft", "hard"]
    assert all(is_accuracy_on(r["eval_success_rate"], r["eval_pairs"]) and r["eval_pairs"] == 4
               for r in records.values())
    assert records["soft"]["steps"] == records["hard"]["steps"] == 2
