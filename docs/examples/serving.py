"""Serving many tasks from one frozen model: one batch, a different prompt on every row.

    python docs/examples/serving.py        # about a minute on 2 CPU cores (SmolLM2-135M)

1. one SmolLM2 holds three prompt adapters: two hard prompts written as text and a soft prompt;
2. a batch of requests for different tasks runs as one forward pass (`adapter_names=`, "__base__" = no
   prompt) and one `generate()` call; each row equals running it alone;
3. an ensemble of prompts scores SST-2 rows in one batched pass;
4. the three adapters are saved together and reloaded together.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from peft import get_peft_model

from peft_softhard import ClassificationObjective, SoftHardConfig, load_adapters, score_ensemble
from peft_softhard.app.models import load_model
from peft_softhard.app.tasks import SST2

SHARED = Path(os.environ.get("PEFT_SOFTHARD_SHARED", Path(__file__).resolve().parents[3] / "shared"))
DEV_ROWS = int(os.environ.get("SERVING_DEV_ROWS", "48"))


def build_model(base):
    """Three adapters of different kinds and lengths in one peft model."""
    def hard(text: str) -> SoftHardConfig:  # a hard prompt that starts as (and, untrained, stays) this text
        ids = tokenizer(text)["input_ids"]
        return SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=len(ids), mode="hard", init="token_ids",
                              init_token_ids=ids)

    model = get_peft_model(base, hard("Movie review sentiment."), adapter_name="sentiment")
    model.add_adapter("news", hard("A news headline about world politics, sports, business or science:"))
    model.add_adapter("soft", SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=8, mode="soft", init="vocab"))
    return model.eval()


base, tokenizer = load_model("smollm2-135m")  # converted once to ~/.cache/peft_softhard
tokenizer.padding_side = "left"  # generation continues after each row's last token
torch.manual_seed(0)
model = build_model(base)

# --- 1. one mixed batch: each request names its task's adapter
requests = [
    ("sentiment", "Review: a gorgeous, witty, seductive movie.\nSentiment:"),
    ("news", "Headline: Stocks rally as oil prices fall.\nTopic:"),
    ("__base__", "The capital of France is"),
    ("sentiment", "Review: the plot is thin and the acting is worse.\nSentiment:"),
]
names = [name for name, _ in requests]
batch = tokenizer([text for _, text in requests], return_tensors="pt", padding=True)
with torch.no_grad():
    logits = model(**batch, adapter_names=names).logits
    next_tokens = logits[:, -1].argmax(-1)  # every row's last token is in the last column
    generated = model.generate(**batch, adapter_names=names, max_new_tokens=8, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id)
width = batch["input_ids"].shape[1]
for (name, text), token, output in zip(requests, next_tokens, generated, strict=True):
    print(f"[{name:>9}] {text!r} -> next {tokenizer.decode(token)!r}; generates "
          f"{tokenizer.decode(output[width:], skip_special_tokens=True)!r}")

# --- 2. the contract: a row in the mixed batch computes what it computes alone
row = 1
model.set_adapter(names[row])
alone_ids = batch["input_ids"][row][batch["attention_mask"][row].bool()][None]
with torch.no_grad():
    alone = model(input_ids=alone_ids).logits[0, -1]
print(f"row {row} mixed vs alone: max |logit difference| {(logits[row, -1] - alone).abs().max():.1e}")

# --- 3. an ensemble: every dev row scored with each prompt in one batched pass, then combined
texts, labels = SST2.load("eval", data_dir=str(SHARED / "data"))
objective = ClassificationObjective(tokenizer, texts[:1], labels[:1], template=SST2.manual_template,
                                    label_words=SST2.label_words, held_out_texts=texts[:DEV_ROWS],
                                    held_out_labels=labels[:DEV_ROWS])
scores = score_ensemble(model, objective, ["sentiment", "soft", "__base__"])
print(f"SST-2, first {DEV_ROWS} dev rows: members {scores.member_accuracy()}, "
      f"ensemble mean {scores.accuracy('mean'):.3f}, vote {scores.accuracy('vote'):.3f}")

# --- 4. save every adapter at once, load every adapter at once
with tempfile.TemporaryDirectory() as folder:
    model.save_pretrained(folder)
    reloaded = load_adapters(base, folder).eval()
    with torch.no_grad():
        again = reloaded(**batch, adapter_names=names).logits
    print(f"reloaded adapters {sorted(reloaded.peft_config)}; same logits: {torch.equal(again, logits)}")
