"""Every `softhard` command on tiny models and small data files (the demo on the real SmolLM2 runs in
test_install.py, from the installed wheel)."""

from __future__ import annotations

import io
import json
import logging
import zipfile

import numpy as np
import pytest
import torch

from peft_softhard.app.cli import build_parser, main

from conftest import NEGATIVE, POSITIVE, SHARED, TINY_DEMO, softhard, task_args


def test_every_command_has_help(capsys):
    commands = ["train", "discover", "eval", "project", "export", "import", "demo"]
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: softhard " + command in capsys.readouterr().out


def test_train_eval_project_export_import_round(capsys, files, tmp_path):
    model = ["--model", str(files / "tiny-gpt2")]
    trained = softhard(capsys, "train", *model, *task_args(files), "--num-virtual-tokens", "2", "3", "--steps", "4",
                       "--eval-interval", "2", "--batch-size", "4", "--output-dir", str(tmp_path / "train"),
                       "--device", "cpu")
    assert [run["num_virtual_tokens"] for run in trained["runs"]] == [2, 3]
    # the reported validation accuracy is the best step's, of the steps scored
    assert all(run["validation_accuracy"] == max(score for _, score in run["score_history"]) for run in trained["runs"])
    assert (tmp_path / "train" / "training_curves.png").stat().st_size > 1000
    assert (tmp_path / "train" / "accuracy_vs_length.png").stat().st_size > 1000
    adapter = trained["runs"][0]["adapter"]

    scored = softhard(capsys, "eval", *model, *task_args(files), "--adapter", adapter)
    assert scored["examples"] == 12 and set(scored) >= {"accuracy", "macro_f1", "examples_per_second"}
    assert scored["accuracy"] == trained["runs"][0]["eval"]["accuracy"]  # the same prompt scored the same way
    text = softhard(capsys, "eval", *model, *task_args(files), "--prompt-text", " Review:")
    bare = softhard(capsys, "eval", *model, *task_args(files))
    assert text["evaluated"] == "prompt text ' Review:'" and bare["evaluated"] == "no prompt"

    reading = softhard(capsys, "project", *model, "--adapter", adapter, "--top-k", "3")
    assert len(reading["token_ids"]) == 2 and len(reading["candidates"][0]) == 3

    softhard(capsys, "export", *model, "--adapter", adapter, "--to", "prompt-tuning", "--out", str(tmp_path / "pt"))
    plain = softhard(capsys, "eval", *model, *task_args(files), "--adapter", str(tmp_path / "pt"))
    assert plain["accuracy"] == scored["accuracy"]
    softhard(capsys, "export", *model, "--adapter", adapter, "--to", "text", "--out", str(tmp_path / "prompt.txt"))
    assert (tmp_path / "prompt.txt").read_text() == reading["text"]
    softhard(capsys, "export", *model, "--adapter", adapter, "--to", "kobold", "--out", str(tmp_path / "p.zip"))
    imported = softhard(capsys, "import", str(tmp_path / "p.zip"), *model, "--out", str(tmp_path / "imported"))
    assert imported["num_virtual_tokens"] == 2
    again = softhard(capsys, "eval", *model, *task_args(files), "--adapter", str(tmp_path / "imported"))
    assert again["accuracy"] == scored["accuracy"]


def test_demo_on_ag_news_uses_its_manual_template_and_rows(capsys, files, tmp_path):
    from peft_softhard.app.tasks import AG_NEWS

    report = softhard(capsys, "demo", "--task", "ag_news", "--model", str(files / "tiny-gpt2"), "--train-rows", "12",
                      "--validation-rows", "6", "--eval-rows", "8", *TINY_DEMO, "--data-dir", str(SHARED / "data"),
                      "--output-dir", str(tmp_path / "demo"), "--device", "cpu")
    assert (report["task"], report["template"]) == ("ag_news", AG_NEWS.manual_template)
    assert (report["train_rows"], report["validation_rows"], report["eval_rows"]) == (12, 6, 8)
    assert report["hard_minus_manual"] == round(report["hard"]["accuracy"] - report["manual"]["accuracy"], 4)
    saved = json.loads((tmp_path / "demo" / "hard" / "prompt.json").read_text())
    assert (saved["template"], saved["label_words"]) == (report["hard_template"], report["hard_label_words"])
    assert report["manual"]["validation"] == report["hard_stages"][0]["start"]  # the search starts at the manual


def test_train_resumes_from_its_checkpoint(capsys, files, tmp_path):
    arguments = ["train", "--model", str(files / "tiny-gpt2"), *task_args(files), "--num-virtual-tokens", "2",
                 "--eval-interval", "2", "--checkpoint-interval", "2", "--batch-size", "4",
                 "--output-dir", str(tmp_path)]
    softhard(capsys, *arguments, "--steps", "4")
    softhard(capsys, *arguments, "--steps", "6", "--resume")
    history = json.loads((tmp_path / "n2" / "history.json").read_text())
    assert history["resumed_from"] == 4 and history["steps"] == 6 and len(history["loss_history"]) == 6


def test_train_stops_at_max_seconds_and_keeps_the_best_prompt(capsys, files, tmp_path):
    trained = softhard(capsys, "train", "--model", str(files / "tiny-gpt2"), *task_args(files), "--num-virtual-tokens",
                       "2", "--steps", "1000", "--eval-interval", "500", "--batch-size", "4", "--max-seconds", "1e-6",
                       "--output-dir", str(tmp_path))
    history = json.loads((tmp_path / "n2" / "history.json").read_text())
    assert history["steps"] < 1000  # the clock stopped it, and the prompt it reached was still scored
    assert [step for step, _ in history["score_history"]][-1] == history["steps"]
    assert (tmp_path / "n2" / "best").is_dir()
    again = softhard(capsys, "eval", "--model", str(files / "tiny-gpt2"), *task_args(files), "--adapter",
                     str(tmp_path / "n2" / "best"))
    assert trained["runs"][0]["eval"]["accuracy"] == again["accuracy"]  # the eval rows, scored by the best prompt


def test_train_a_soft_prompt_with_a_classification_head(capsys, files, tmp_path):
    result = softhard(capsys, "train", "--model", str(files / "tiny-bert"), "--task-type", "SEQ_CLS",
                      *task_args(files), "--num-virtual-tokens", "3", "--steps", "3", "--batch-size", "4",
                      "--eval-interval", "3", "--output-dir", str(tmp_path))
    assert result["runs"][0]["validation_accuracy"] == max(score for _, score in result["runs"][0]["score_history"])
    scored = softhard(capsys, "eval", "--model", str(files / "tiny-bert"), *task_args(files),
                      "--adapter", result["runs"][0]["adapter"])
    assert scored["accuracy"] == result["runs"][0]["eval"]["accuracy"]


@pytest.mark.parametrize(("model", "task_type"), [("tiny-gpt2", "CAUSAL_LM"), ("tiny-bert", "SEQ_CLS")])
def test_eval_an_ensemble(capsys, files, tmp_path, model, task_type):
    model = ["--model", str(files / model)]
    adapters = []
    for mode, length in [("soft", "2"), ("hard", "4"), ("soft", "3")]:
        trained = softhard(capsys, "train", *model, "--task-type", task_type, *task_args(files), "--mode", mode,
                           "--num-virtual-tokens", length, "--steps", "2", "--batch-size", "4", "--lr", "0.3",
                           "--eval-interval", "2", "--output-dir", str(tmp_path / f"{mode}{length}"))
        adapters.append(trained["runs"][0]["adapter"])
    scored = softhard(capsys, "eval", *model, *task_args(files), "--ensemble", *adapters, "--combine", "vote")
    assert [r["evaluated"] for r in scored["results"]] == [
        *[f"adapter {a}" for a in adapters], "ensemble (mean)", "ensemble (vote)"]
    for adapter, member in zip(adapters, scored["results"], strict=False):  # each member as it scores alone
        alone = softhard(capsys, "eval", *model, *task_args(files), "--adapter", adapter)
        assert member["accuracy"] == alone["accuracy"]
    assert scored["accuracy"] == scored["results"][-1]["accuracy"] and scored["examples"] == 12


def test_an_ensemble_of_adapters_for_different_task_types_is_refused(capsys, files, tmp_path):
    adapters = []
    for model, task_type in [("tiny-gpt2", "CAUSAL_LM"), ("tiny-bert", "SEQ_CLS")]:
        trained = softhard(capsys, "train", "--model", str(files / model), "--task-type", task_type, *task_args(files),
                           "--num-virtual-tokens", "2", "--steps", "1", "--batch-size", "4", "--eval-interval", "1",
                           "--output-dir", str(tmp_path / model))
        adapters.append(trained["runs"][0]["adapter"])
    assert main(["eval", *task_args(files), "--ensemble", *adapters]) == 2
    assert "different task types ['CAUSAL_LM', 'SEQ_CLS']" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["pez", "gcg"])
def test_discover_tokens_in_front(capsys, caplog, files, tmp_path, method):
    caplog.set_level(logging.WARNING, logger="peft_softhard")
    result = softhard(capsys, "discover", "--model", str(files / "tiny-gpt2"), *task_args(files), "--method", method,
                      "--stages", "tokens", "--placement", "prefix", "--num-virtual-tokens", "3", "--steps", "3",
                      "--eval-interval", "3", "--batch-size", "4", "--top-k", "8", "--candidates", "4",
                      "--output-dir", str(tmp_path))
    # the tokens go in front when the search keeps them; otherwise the user's template stays as it was
    assert result["template"] == ("{prompt} {text}. It was" if result["token_ids"] else " {text}. It was")
    assert result["round_trips"] is True
    # the manual start (the template's words: ". It was") keeps the tokens whole words allow, so nothing warns
    assert not [r.getMessage() for r in caplog.records if "allowed vocabulary" in r.getMessage()]
    assert (tmp_path / "prompt.txt").read_text() == result["prompt"]
    if result["token_ids"]:  # tokens in front of the unchanged template: also a SOFTHARD adapter
        assert len(result["token_ids"]) == 3 and (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    scored = softhard(capsys, "eval", "--model", str(files / "tiny-gpt2"), *task_args(files),
                      "--prompt-text", result["text"])
    assert scored["accuracy"] == result["eval"]["accuracy"]


def test_discover_searches_the_whole_prompt_and_eval_scores_its_file(capsys, files, tmp_path):
    result = softhard(capsys, "discover", "--model", str(files / "tiny-gpt2"), *task_args(files), "--steps", "4",
                      "--label-steps", "2", "--edit-steps", "2", "--eval-interval", "2", "--batch-size", "4",
                      "--pool-size", "4", "--race-steps", "2", "--edit-candidates", "4", "--calibrate",
                      "--output-dir", str(tmp_path))
    saved = json.loads((tmp_path / "prompt.json").read_text())
    assert (saved["template"], saved["label_words"], saved["token_ids"]) == (
        result["template"], result["label_words"], result["token_ids"])
    assert [stage["stage"] for stage in result["stages"]] == ["label_words", "tokens", "template_edits"]
    assert result["validation_accuracy"] >= result["start_validation_accuracy"]  # the user's prompt is the floor
    assert saved["filled"] == result["prompt"] == (tmp_path / "prompt.txt").read_text()
    scored = softhard(capsys, "eval", "--model", str(files / "tiny-gpt2"), *task_args(files), "--prompt-file",
                      str(tmp_path / "prompt.json"), "--calibrate")
    assert scored["accuracy"] == result["eval"]["accuracy"]
    assert scored["calibrated"]["accuracy"] == result["eval_calibrated"]["accuracy"]


def test_the_command_line_runs_the_python_defaults():
    """One definition: `softhard discover`, `softhard demo` and `DiscoveryConfig()` run the same search, `softhard
    train` runs `TrainConfig()` and the demo `DemoConfig()`, when no option is given."""
    from peft_softhard import DiscoveryConfig, TrainConfig
    from peft_softhard.app.cli import parse_args
    from peft_softhard.app.options import config_from_args

    for command in ("discover", "demo"):
        args = parse_args([command])
        assert config_from_args(DiscoveryConfig, args, seed=0, show_progress=True) == DiscoveryConfig(), command
    assert config_from_args(TrainConfig, parse_args(["train"]), seed=0, show_progress=True) == TrainConfig()
    from peft_softhard.app.demo import DemoConfig

    assert config_from_args(DemoConfig, parse_args(["demo"])) == DemoConfig()  # docs/quickstart.md's Python reads it
    assert config_from_args(DemoConfig, parse_args(["demo", "--soft-steps", "5"])) == DemoConfig(soft_steps=5)
    with pytest.raises(ValueError, match="built-in task"):
        DemoConfig(task="imdb")
    reference = parse_args(["discover", "--preset", "pez-reference", "--steps", "7"])
    assert config_from_args(DiscoveryConfig, reference, seed=0, show_progress=True) == DiscoveryConfig.from_preset(
        "pez-reference", steps=7)  # a preset sets the defaults, explicit options still win


def test_typed_templates_and_label_words_are_what_the_user_meant(tmp_path):
    from peft_softhard.app.cli import parse_args, task_from_args

    typed = ["--template", "Question: {text}\\nType:", "--label-word", " bad", "--label-word", " good"]
    task = task_from_args(parse_args(["eval", "--task", "sst2", *typed]))
    assert task.template == "Question: {text}\nType:" and task.label_words == [" bad", " good"]
    with pytest.raises(ValueError, match="one --label-word per class"):
        task_from_args(parse_args(["eval", "--task", "sst2", "--label-word", " bad"]))


def kobold_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return str(path)


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


META = json.dumps({"name": "x", "author": "", "supported": [], "description": ""}).encode()


@pytest.mark.parametrize(
    "members, message",
    [
        ({"tensor.npy": npy(np.zeros((2, 32), np.float32)), "meta.json": META, "run.py": b"print(1)"}, "exactly"),
        ({"tensor.npy": npy(np.zeros((2, 16), np.float32)), "meta.json": META}, "d_model=16"),
        ({"tensor.npy": npy(np.zeros((2, 3, 32), np.float32)), "meta.json": META}, "must be 2-D"),
        ({"tensor.npy": npy(np.full((2, 32), np.nan, np.float32)), "meta.json": META}, "NaN or Inf"),
        ({"tensor.npy": npy(np.array([{"a": 1}], dtype=object)), "meta.json": META}, "not a plain numeric array"),
        ({"tensor.npy": npy(np.zeros((2, 32), np.int64)), "meta.json": META}, "dtype int64"),
        ({"tensor.npy": npy(np.zeros((2, 32), np.float32)), "meta.json": b"{not json"}, "not valid JSON"),
    ],
)
def test_import_refuses_bad_kobold_files(capsys, files, tmp_path, members, message):
    path = kobold_zip(tmp_path / "bad.zip", members)
    code = main(["import", path, "--model", str(files / "tiny-gpt2"), "--out", str(tmp_path / "out")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_import_reads_bfloat16_stored_as_raw_two_byte_values(capsys, files, tmp_path):
    vectors = torch.randn(3, 32).to(torch.bfloat16)
    raw = vectors.view(torch.int16).numpy().view(np.dtype("V2"))
    path = kobold_zip(tmp_path / "bf16.zip", {"tensor.npy": npy(raw), "meta.json": META})
    softhard(capsys, "import", path, "--model", str(files / "tiny-gpt2"), "--out", str(tmp_path / "out"))
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "out" / "adapter_model.safetensors")["prompt_embeddings"]
    assert torch.equal(saved, vectors.float())


def test_errors_are_reported_not_raised(capsys, files):
    assert main(["eval", "--model", str(files / "tiny-gpt2"), "--task", "no-such-task"]) == 2
    assert "Unknown task 'no-such-task'" in capsys.readouterr().err
    assert main(["eval", "--model", str(files / "tiny-gpt2"), *task_args(files), "--manual"]) == 2
    assert "no manual prompt" in capsys.readouterr().err


def test_device_is_checked_before_the_model_loads(capsys, files, monkeypatch):
    import peft_softhard.app.models as models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded the model for a bad --device"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in [("gpu0", "'gpu0' is not a device torch knows"), ("cuda", "torch sees no CUDA GPU")]:
        assert main(["eval", "--model", str(files / "tiny-gpt2"), *task_args(files), "--device", device]) == 2
        assert message in capsys.readouterr().err


def test_device_auto_is_the_gpu_when_torch_sees_one(monkeypatch):
    from peft_softhard.app.models import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "1")  # torchrun's second process on a machine
    assert resolve_device("auto") == torch.device("cuda", 1)


def test_a_task_file_with_jsonl_and_tsv_data(capsys, files, tmp_path):
    folder = tmp_path / "task"
    (folder / "data").mkdir(parents=True)
    rows = [(t, 1) for t in POSITIVE] + [(t, 0) for t in NEGATIVE]
    (folder / "data" / "train.jsonl").write_text("".join(json.dumps({"review": t, "stars": y}) + "\n" for t, y in rows))
    (folder / "data" / "dev.tsv").write_text("review\tstars\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    (folder / "reviews.yaml").write_text(
        "name: reviews\ntrain: data/train.jsonl\neval: data/dev.tsv\ntext_column: review\nlabel_column: stars\n"
        "template: ' {text}. It was'\nlabel_words: [' bad', ' good']\n"
    )
    scored = softhard(capsys, "eval", "--model", str(files / "tiny-gpt2"), "--task", str(folder / "reviews.yaml"))
    assert scored["task"] == "reviews" and scored["examples"] == 12


def test_mislabelled_or_malformed_data_is_refused(capsys, files, tmp_path):
    (tmp_path / "bad.csv").write_text("text,label\nfine,1\nodd,7\n")
    code = main(["eval", "--model", str(files / "tiny-gpt2"), "--eval-file", str(tmp_path / "bad.csv"),
                 "--label-word", " no", "--label-word", " yes"])
    assert code == 2 and "labels [7] are outside 0..1" in capsys.readouterr().err
    code = main(["eval", "--model", str(files / "tiny-gpt2"), "--eval-file", str(tmp_path / "bad.csv"),
                 "--text-column", "sentence", "--label-word", " no", "--label-word", " yes"])
    assert code == 2 and "no column ['sentence']" in capsys.readouterr().err


def test_a_relative_data_file_is_read_from_the_working_directory(capsys, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.csv").write_text((files / "eval.csv").read_text())
    words = ["--label-word", " bad", "--label-word", " good"]
    scored = softhard(capsys, "eval", "--model", str(files / "tiny-gpt2"), "--eval-file", "mine.csv", *words)
    assert scored["examples"] == 12
    assert main(["eval", "--model", str(files / "tiny-gpt2"), "--eval-file", "absent.csv", *words]) == 2
    error = capsys.readouterr().err
    assert f"No data file at {tmp_path / 'absent.csv'}" in error and "shared" not in error


def test_a_malformed_jsonl_line_is_named_with_its_file_and_line(capsys, files, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"text": "a good film", "label": 1}\n{"text": "a bad film", "label": 0\n')
    code = main(["eval", "--model", str(files / "tiny-gpt2"), "--eval-file", str(data), "--label-word", " bad",
                 "--label-word", " good"])
    assert code == 2 and f"{data}, line 2: not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "discover"])
def test_bad_arguments_are_reported_before_any_model_or_data_is_loaded(capsys, tmp_path, command):
    # neither the model nor the data exist: the argument is the first thing checked
    code = main([command, "--model", str(tmp_path / "no-model"), "--train-file", str(tmp_path / "no.csv"),
                 "--label-word", " a", "--label-word", " b", "--num-virtual-tokens", "0"])
    assert code == 2 and "num_virtual_tokens must be a positive integer" in capsys.readouterr().err
    code = main([command, "--model", str(tmp_path / "no-model"), "--steps", "0"])
    assert code == 2 and "steps must be a positive integer" in capsys.readouterr().err
