"""Quickstart on the embedded default model (SmolLM2-135M) and SST-2: soft prompt, hard prompt, reading.

    python docs/examples/quickstart.py            # about 3 minutes on 2 CPU cores

1. scores the manual prompt `Review: {sentence}\\nSentiment:` (label words " positive" / " negative");
2. trains a 10-token soft prompt for a few steps with a plain PyTorch loop and scores it;
3. reads the soft prompt back as its nearest tokens (`project_prompt`);
4. builds a hard prompt (SOFTHARD, mode="hard") and checks that the model sees exactly its tokens;
5. saves the adapter, reloads it, and exports it as a plain peft PROMPT_TUNING adapter.
Subsets keep it short: SST_TRAIN_ROWS training rows seen, the first SST_DEV_ROWS dev rows scored.
"""

from __future__ import annotations

import csv
import os
import random
import tempfile
import time
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model

import peft_softhard
from peft_softhard.app.models import load_smollm2

SHARED = Path(os.environ.get("PEFT_SOFTHARD_SHARED", Path(__file__).resolve().parents[3] / "shared"))
TEMPLATE = "Review: {sentence}\nSentiment:"
LABEL_WORDS = [" negative", " positive"]  # label 0, label 1
SST_DEV_ROWS, STEPS, BATCH = 200, 30, 8


def read_sst2(split: str) -> list[tuple[str, int]]:
    with open(SHARED / "data" / "sst2" / f"{split}.tsv", newline="") as file:
        rows = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(rows)
        return [(sentence, int(label)) for sentence, label in rows]


def label_logits(model, tokenizer, sentences: list[str], label_ids: torch.Tensor) -> torch.Tensor:
    """Logits of the label words at each row's last token (right padding keeps positions unchanged)."""
    batch = tokenizer([TEMPLATE.format(sentence=s) for s in sentences], return_tensors="pt", padding=True)
    logits = model(**batch).logits
    last = batch["attention_mask"].sum(1) - 1 + (logits.shape[1] - batch["input_ids"].shape[1])
    return logits[torch.arange(len(sentences)), last][:, label_ids]


@torch.no_grad()
def accuracy(model, tokenizer, rows, label_ids) -> float:
    correct = 0
    for start in range(0, len(rows), 16):
        chunk = rows[start : start + 16]
        predictions = label_logits(model, tokenizer, [s for s, _ in chunk], label_ids).argmax(-1)
        correct += sum(int(p) == y for p, (_, y) in zip(predictions.tolist(), chunk, strict=True))
    return correct / len(rows)


def main() -> None:
    started = time.time()
    torch.manual_seed(0)
    base, tokenizer = load_smollm2()
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    label_ids = torch.tensor([tokenizer(w, add_special_tokens=False).input_ids[0] for w in LABEL_WORDS])
    dev = read_sst2("dev")[:SST_DEV_ROWS]
    train = random.Random(0).sample(read_sst2("train"), STEPS * BATCH)
    print(f"SmolLM2-135M loaded in {time.time() - started:.0f} s; scoring the first {len(dev)} SST-2 dev rows")
    print(f"manual prompt accuracy: {accuracy(base, tokenizer, dev, label_ids):.1%}")

    config = peft_softhard.SoftHardConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=10, mode="soft", init="vocab", metric="cosine"
    )
    model = get_peft_model(base, config)
    model.print_trainable_parameters()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    for step in range(STEPS):
        rows = train[step * BATCH : (step + 1) * BATCH]
        logits = label_logits(model, tokenizer, [s for s, _ in rows], label_ids)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([y for _, y in rows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 9:
            print(f"  step {step + 1}/{STEPS}  loss {loss.item():.3f}")
    model.eval()
    print(f"soft prompt ({STEPS * BATCH} training examples) accuracy: {accuracy(model, tokenizer, dev, label_ids):.1%}")

    reading = peft_softhard.project_prompt(model, tokenizer, top_k=3)
    print(f"soft prompt read as tokens: {reading.text!r}")
    print(f"  cosine similarity of each vector to its token: {[round(s, 2) for s in reading.similarities]}")

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        again = PeftModel.from_pretrained(base, folder, adapter_name="reloaded")
        reloaded, trained = again.prompt_encoder["reloaded"], model.prompt_encoder["default"]
        assert torch.equal(reloaded.embedding.weight, trained.embedding.weight)
        peft_softhard.export_prompt_tuning(model, os.path.join(folder, "plain"))
        print(f"saved, reloaded and exported to PROMPT_TUNING: {sorted(os.listdir(os.path.join(folder, 'plain')))}")

    hard = peft_softhard.SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=10, mode="hard")
    model.add_adapter("hard", hard)
    model.set_adapter("hard")
    ids = model.prompt_encoder["hard"].current_token_ids()
    sample = tokenizer(TEMPLATE.format(sentence=dev[0][0]), return_tensors="pt")
    prepended = torch.cat([ids[None], sample["input_ids"]], dim=1)
    with torch.no_grad():
        difference = (model(**sample).logits - base(input_ids=prepended).logits).abs().max().item()
    print(f"hard prompt {tokenizer.decode(ids)!r}: max |logit difference| vs the literal tokens = {difference:.1e}")
    print(f"done in {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
