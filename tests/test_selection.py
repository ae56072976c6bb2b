"""Honest selection: validation rows carved from the train split choose the step, the eval split is scored
once; and the warm starts of `--init`."""

from __future__ import annotations

import pytest

from peft_softhard import DiscoveryConfig
from peft_softhard.app.cli import main, parse_args
from peft_softhard.app.tasks import SST2, carve_validation, custom_task, load_task_data, prompt_init

from conftest import softhard, task_args


def test_validation_rows_are_seeded_disjoint_long_enough_and_leave_most_data_to_train():
    texts = [" ".join(["w"] * (i % 12 + 1)) + (" ." if i % 3 else "") for i in range(100)]
    validation, rest = carve_validation(texts, 10, seed=3, min_words=8)
    assert len(validation) == 10 and not set(validation) & set(rest) and len(rest) == 90
    assert all(len(texts[i].split()) >= 8 for i in validation)
    sentences, _ = carve_validation(texts, 10, seed=3, min_words=8, sentences_only=True)
    assert all(texts[i].endswith(" .") and len(texts[i].split()) >= 8 for i in sentences)
    assert not all(texts[i].endswith(" .") for i in validation)  # without the rule, phrases are carved too
    assert carve_validation(texts, 10, seed=3, min_words=8) == (validation, rest)
    assert carve_validation(texts, 10, seed=4, min_words=8)[0] != validation
    assert len(carve_validation(texts, 500, seed=0)[0]) == 20  # at most a fifth of the rows
    with pytest.raises(ValueError, match="too few"):
        carve_validation(texts[:4], 2, seed=0)


def test_sst2_validation_comes_from_train_sentences_not_from_dev():
    data = load_task_data(SST2, max_train=300, max_eval=50, seed=0, validation_rows=100)
    train, validation, evaluation = data.train[0], data.validation[0], data.evaluation[0]
    assert (len(train), len(validation), len(evaluation)) == (300, 100, 50)
    assert all(text.rstrip().endswith((".", "!", "?")) for text in validation)  # whole sentences, as dev's rows
    assert not set(validation) & set(train)
    dev = set(SST2.load("eval")[0])
    assert not set(validation) & dev and set(evaluation) <= dev


def test_a_task_without_a_train_split_cannot_train(capsys, files):
    code = main(["discover", "--model", str(files / "tiny-gpt2"), "--eval-file", str(files / "eval.csv"),
                 "--label-word", " bad", "--label-word", " good", "--steps", "1"])
    assert code == 2 and "no train split" in capsys.readouterr().err


def test_warm_starts(gpt2_tokenizer):
    ids = prompt_init(SST2, "labels", gpt2_tokenizer, 5)["init_token_ids"]
    negative, positive = (gpt2_tokenizer(word, add_special_tokens=False)["input_ids"] for word in SST2.label_words)
    assert ids == (negative + positive) * 2 + negative  # the label words repeated (the PEZ reference init)
    manual = prompt_init(SST2, "manual", gpt2_tokenizer, 4)["init_token_ids"]
    assert manual == gpt2_tokenizer(SST2.instruction, add_special_tokens=False)["input_ids"][:4]
    untitled = custom_task(label_words=[" a", " b"], train="x.csv", template="Q: {text} A:")
    assert gpt2_tokenizer.decode(prompt_init(untitled, "manual", gpt2_tokenizer, 4)["init_token_ids"]) == "Q: A:"
    assert prompt_init(SST2, "text", gpt2_tokenizer, 4, "Hi")["init_text"] == "Hi"
    with pytest.raises(ValueError, match="--init-text"):
        prompt_init(SST2, "text", gpt2_tokenizer, 4)


def test_discover_reports_validation_and_eval_and_starts_where_asked(capsys, files, tmp_path):
    model = ["--model", str(files / "tiny-gpt2")]
    common = [*model, *task_args(files), "--num-virtual-tokens", "3", "--steps", "2", "--eval-interval", "2",
              "--batch-size", "4", "--top-k", "8", "--candidates", "4", "--stages", "tokens", "--placement", "prefix",
              "--method", "pez"]  # a token search that starts somewhere: in front, PEZ
    labels = softhard(capsys, "discover", *common, "--init", "labels", "--output-dir", str(tmp_path / "labels"))
    assert labels["score_history"][0][0] == 0 and labels["validation_accuracy"] >= labels["start_validation_accuracy"]
    assert labels["stages"][0]["prompt"]["token_ids"] or not labels["stages"][0]["kept"]  # the search's best
    assert set(labels["eval"]) >= {"accuracy", "examples"} and labels["init"] == "labels"

    soft = softhard(capsys, "train", *model, *task_args(files), "--num-virtual-tokens", "3", "--steps", "2",
                    "--eval-interval", "2", "--batch-size", "4", "--output-dir", str(tmp_path / "soft"))
    adapter = soft["runs"][0]["adapter"]
    for extra in (["--init", "soft", "--init-adapter", adapter], ["--distill-from", adapter, "--method", "pez_refine",
                                                                  "--buffer-size", "2", "--n-replace", "2"]):
        result = softhard(capsys, "discover", *common, *extra, "--output-dir", str(tmp_path / extra[1]))
        assert len(result["stages"][0]["prompt"]["token_ids"]) == 3
    assert main(["discover", *common, "--init", "soft"]) == 2
    assert "--init-adapter" in capsys.readouterr().err


def test_the_reference_preset_sets_defaults_and_explicit_options_win():
    args = parse_args(["discover", "--preset", "pez-reference", "--steps", "3"])
    assert (args.steps, args.optimizer, args.lr, args.init, args.validation_rows, args.batch_size) == (
        3, "adafactor", 0.3, "labels", 5000, 16)
    plain, defaults = parse_args(["discover"]), DiscoveryConfig()
    assert (plain.steps, plain.optimizer, plain.stages, plain.init, plain.validation_rows) == (
        defaults.steps, defaults.optimizer, defaults.stages, "manual", 500)
