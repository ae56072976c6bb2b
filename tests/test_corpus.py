"""Style and domain prompts: the corpus objective, reading and splitting a corpus, and the command line's
--corpus runs (train, discover, eval, the KoboldAI zip)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from peft import get_peft_model
from safetensors.torch import load_file

from peft_softhard import CorpusObjective, SoftHardConfig
from peft_softhard.app.cli import main
from peft_softhard.app.corpus import read_corpus, split_corpus, split_documents
from peft_softhard.files.kobold import read_kobold
from peft_softhard.testing import build, tiny_gemma3, tiny_gpt2, tiny_llama

from conftest import softhard

DOCUMENTS = ["the film was a quiet, warm story about two friends.", "a long and dull movie .",
             "great acting, and a score that stays with you for days after the lights come up.", "bad"]
CAUSAL = {"gpt2": lambda: tiny_gpt2(initializer_range=0.3), "llama": lambda: tiny_llama(50257, 0.3),
          "gemma3": lambda: tiny_gemma3(50257)}  # the real GPT-2 vocabulary: the text goes through its tokenizer


def models_own_loss(model, prompt_ids: list[int], rows: list[list[int]], scored_from: int) -> torch.Tensor:
    """The causal LM's own loss (`labels=`) on the prompt's tokens literally prepended to each row, the first
    `scored_from` row tokens and the padding not counted."""
    width = len(prompt_ids) + max(len(row) for row in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        tokens = prompt_ids + row
        input_ids[i, : len(tokens)], mask[i, : len(tokens)] = torch.tensor(tokens), 1
        start = len(prompt_ids) + scored_from
        labels[i, start : len(tokens)] = torch.tensor(row[scored_from:])
    return model(input_ids=input_ids, attention_mask=mask, labels=labels).loss


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_the_loss_is_the_models_own_loss_with_the_hard_prompt_literally_prepended(gpt2_tokenizer, name):
    model = build(CAUSAL[name])
    objective = CorpusObjective(gpt2_tokenizer, DOCUMENTS, chunk_tokens=6)
    ids = gpt2_tokenizer(" Write a movie review:", add_special_tokens=False)["input_ids"]
    peft_model = get_peft_model(model, SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=len(ids), mode="hard",
                                                      init="token_ids", init_token_ids=ids))
    prompt = peft_model.prompt_encoder["default"].prompt_embeddings()  # what the hard prompt feeds the model
    indices = list(range(objective.num_train))
    ours = objective.loss(model, prompt, indices)
    rows = [[objective.separator_id, *chunk] for chunk in objective.train]
    theirs = models_own_loss(model, ids, rows, scored_from=1)  # the separator starts the row and is not scored
    assert torch.allclose(ours, theirs, atol=1e-5), (ours.item(), theirs.item())
    candidates = objective.candidate_losses(model, torch.tensor([ids, ids[::-1]]), indices)
    assert torch.allclose(candidates[0], theirs, atol=1e-5)
    assert torch.allclose(candidates[1], models_own_loss(model, ids[::-1], rows, 1), atol=1e-5)
    # no prompt: the same tokens scored, each row starting at its separator
    assert math.isclose(objective.mean_nll(model, torch.tensor([], dtype=torch.long), "train"),
                        models_own_loss(model, [], rows, 1).item(), rel_tol=1e-5)


def test_documents_are_cut_into_chunks_on_token_boundaries_never_across_documents(gpt2_tokenizer):
    objective = CorpusObjective(gpt2_tokenizer, DOCUMENTS, held_out_documents=DOCUMENTS[:1], chunk_tokens=5)
    expected = []
    for document in DOCUMENTS:
        ids = gpt2_tokenizer(document, add_special_tokens=False)["input_ids"]
        expected += [ids[i : i + 5] for i in range(0, len(ids), 5)]
    assert objective.train == expected and max(map(len, objective.train)) == 5 and [3290] not in expected
    assert objective.separator_id == gpt2_tokenizer.eos_token_id  # GPT-2's BOS and EOS are the same token
    rows = objective.rows(objective.train[:2])
    assert rows.input_ids[:, 0].tolist() == [objective.separator_id] * 2 and not rows.target_mask[:, 0].any()
    assert objective.num_tokens("train") == sum(map(len, expected))
    model = build(CAUSAL["gpt2"])
    assert objective.score(model, torch.tensor([464])) == -objective.mean_nll(model, torch.tensor([464]), "held_out")


def test_reading_a_corpus(tmp_path):
    text = tmp_path / "stories.txt"
    text.write_text("First story,\nline two.\n\n  \nSecond story.\r\n\r\nThird.\n")
    assert read_corpus(str(text)) == ["First story,\nline two.", "Second story.", "Third."]
    assert split_documents("a\n\n\nb") == ["a", "b"]
    lines = tmp_path / "stories.jsonl"
    lines.write_text(json.dumps({"body": "one"}) + "\n\n" + json.dumps({"body": "two"}) + "\n")
    assert read_corpus(str(lines), text_field="body") == ["one", "two"]
    splits = split_corpus([f"document {i}" for i in range(20)], 0.1, 0.2, seed=3)
    assert (len(splits.train), len(splits.validation), len(splits.report)) == (14, 2, 4)
    assert not set(splits.train) & (set(splits.validation) | set(splits.report))
    assert split_corpus([f"document {i}" for i in range(20)], 0.1, 0.2, seed=3) == splits


def test_a_hub_corpus_is_read_through_datasets(monkeypatch):
    import datasets

    asked = []

    def load_dataset(name, config, split):
        asked.append((name, config, split))
        return datasets.Dataset.from_dict({"story": ["once upon a time", ""], "id": [1, 2]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert read_corpus("hub:user/tales:short@validation", text_field="story") == ["once upon a time"]
    assert read_corpus("hub:user/tales", text_field="story") and asked[-1] == ("user/tales", None, "train")
    assert asked[0] == ("user/tales", "short", "validation")
    with pytest.raises(ValueError, match="no column 'text'"):
        read_corpus("hub:user/tales")


def test_bad_corpora_are_refused_with_the_reason(tmp_path, gpt2_tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    with pytest.raises(ValueError, match="empty"):
        read_corpus(str(empty))
    binary = tmp_path / "weights.bin"
    binary.write_bytes(b"PK\x03\x04\x00\x00binary")
    with pytest.raises(ValueError, match="not a text file"):
        read_corpus(str(binary))
    lines = tmp_path / "rows.jsonl"
    lines.write_text('{"title": "no text field"}\n')
    with pytest.raises(ValueError, match="line 1.*'text'"):
        read_corpus(str(lines))
    with pytest.raises(FileNotFoundError):
        read_corpus(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="need at least 10 documents"):
        split_corpus(["one", "two", "three", "four", "five"], validation_share=0.1, report_share=0.1)
    with pytest.raises(ValueError, match="at least 1 token"):
        CorpusObjective(gpt2_tokenizer, DOCUMENTS, chunk_tokens=0)


def corpus_file(tmp_path):
    path = tmp_path / "reviews.txt"
    path.write_text("\n\n".join(f"review {i}: {DOCUMENTS[i % len(DOCUMENTS)]}" for i in range(20)))
    return path


def test_train_on_a_text_file_to_a_kobold_zip_that_imports_back_bit_for_bit(capsys, files, tmp_path):
    model = ["--model", str(files / "tiny-gpt2")]
    corpus = ["--corpus", str(corpus_file(tmp_path)), "--chunk-tokens", "8"]
    zip_path = tmp_path / "style.zip"
    trained = softhard(capsys, "train", *model, *corpus, "--num-virtual-tokens", "3", "--steps", "4",
                       "--batch-size", "4", "--eval-interval", "2", "--output-dir", str(tmp_path / "out"),
                       "--kobold", str(zip_path), "--sample", "2")
    (result,) = trained["runs"]
    assert result["kobold"] == str(zip_path) and result["validation_perplexity"] > 1
    assert result["eval"]["tokens"] > 0 and result["eval"]["no_prompt_perplexity"] > 1
    assert len(result["samples"]["with_prompt"]) == len(result["samples"]["no_prompt"]) == 2
    best = load_file(tmp_path / "out" / "n3" / "best" / "adapter_model.safetensors")["prompt_embeddings"]
    vectors, meta = read_kobold(zip_path)
    assert torch.equal(vectors, best) and meta["name"] == "reviews"
    softhard(capsys, "import", str(zip_path), *model, "--out", str(tmp_path / "imported"))
    imported = load_file(tmp_path / "imported" / "adapter_model.safetensors")["prompt_embeddings"]
    assert torch.equal(imported, best)
    scored = softhard(capsys, "eval", *model, *corpus, "--adapter", str(tmp_path / "imported"))
    assert math.isclose(scored["perplexity"], result["eval"]["perplexity"], rel_tol=1e-5)  # the same report documents
    bare = softhard(capsys, "eval", *model, *corpus, "--sample", "1")
    assert bare["perplexity"] == bare["no_prompt_perplexity"] == scored["no_prompt_perplexity"]


@pytest.mark.parametrize("method", ["pez", "gcg"])
def test_discover_a_hard_prompt_for_a_corpus(capsys, files, tmp_path, method):
    found = softhard(capsys, "discover", "--model", str(files / "tiny-gpt2"), "--corpus", str(corpus_file(tmp_path)),
                     "--method", method, "--num-virtual-tokens", "3", "--steps", "3", "--batch-size", "4",
                     "--eval-interval", "1", "--candidates", "4", "--top-k", "4", "--output-dir", str(tmp_path / "out"))
    assert found["init"] == "vocab" and len(found["token_ids"]) == 3
    assert found["validation_perplexity"] <= found["start_validation_perplexity"]  # step 0 competes too
    assert found["eval"]["perplexity"] > 1


def test_corpus_options_that_cannot_work_are_refused(capsys, files, tmp_path):
    corpus = ["--model", str(files / "tiny-gpt2"), "--corpus", str(corpus_file(tmp_path))]
    for argv, reason in ((["train", *corpus, "--init", "manual"], "a corpus has neither"),
                         (["train", *corpus, "--chunk-tokens", "0"], "at least 1 token"),
                         (["discover", *corpus, "--distill-from", str(tmp_path)], "no classes"),
                         (["eval", *corpus, "--manual"], "are for tasks")):
        assert main(argv) == 2, argv
        assert reason in capsys.readouterr().err, argv
