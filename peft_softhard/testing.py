"""Tiny random models built in code, for tests and quick experiments that must not touch the hub.

Example:
    ```py
    >>> from peft_softhard.testing import build, tiny_gemma3
    >>> model = build(tiny_gemma3)  # seeded, in eval mode
    ```
"""

from __future__ import annotations

import torch
import transformers

SMALL_VOCAB = 1000


def tiny_gpt2(hidden: int = 32, vocab: int = 50257, initializer_range: float = 0.02) -> transformers.PreTrainedModel:
    """GPT-2 with the real 50,257-token vocabulary and tied input/output embeddings."""
    config = transformers.GPT2Config(
        vocab_size=vocab, n_embd=hidden, n_layer=2, n_head=2, n_positions=128, initializer_range=initializer_range
    )
    return transformers.GPT2LMHeadModel(config)


def tiny_llama(vocab: int = SMALL_VOCAB, initializer_range: float = 0.02) -> transformers.PreTrainedModel:
    """Llama with untied embeddings. A larger `initializer_range` gives a model whose output a prompt can steer
    (at 0.02 a random tiny model predicts nearly uniformly, whatever its input)."""
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        initializer_range=initializer_range,
    )
    return transformers.LlamaForCausalLM(config)


def tiny_gemma3(vocab: int = SMALL_VOCAB) -> transformers.PreTrainedModel:
    """Gemma3 text model: its embedding module multiplies by sqrt(hidden_size)."""
    config = transformers.Gemma3TextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=128, sliding_window=16,
        bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )
    return transformers.Gemma3ForCausalLM(config)


def tiny_gpt2_seq_cls() -> transformers.PreTrainedModel:
    """A decoder with a classification head: it reads the last real position, unlike BERT's first."""
    config = transformers.GPT2Config(vocab_size=SMALL_VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=128,
                                     pad_token_id=0)
    return transformers.GPT2ForSequenceClassification(config)


def _bert_config(num_labels: int = 2) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=SMALL_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, num_labels=num_labels, pad_token_id=0,
    )


def tiny_bert_seq_cls() -> transformers.PreTrainedModel:
    return transformers.BertForSequenceClassification(_bert_config())


def tiny_bert_token_cls() -> transformers.PreTrainedModel:
    return transformers.BertForTokenClassification(_bert_config(num_labels=3))


def tiny_bert() -> transformers.PreTrainedModel:
    return transformers.BertModel(_bert_config())


def tiny_t5() -> transformers.PreTrainedModel:
    config = transformers.T5Config(
        vocab_size=SMALL_VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    return transformers.T5ForConditionalGeneration(config)


# name -> (task type, factory): one model of every architecture and head the exactness tests cover. The causal
# models have larger weights (but Gemma 3), so that a prompt visibly changes their output.
ARCHITECTURES = {
    "gpt2": ("CAUSAL_LM", lambda: tiny_gpt2(initializer_range=0.3)),  # tied embeddings, the real vocabulary size
    "llama": ("CAUSAL_LM", lambda: tiny_llama(initializer_range=0.3)),
    "gemma3": ("CAUSAL_LM", tiny_gemma3),  # scales inside its embedding module, sliding-window layers
    "t5": ("SEQ_2_SEQ_LM", tiny_t5),
    "bert-seq-cls": ("SEQ_CLS", tiny_bert_seq_cls),
    "gpt2-seq-cls": ("SEQ_CLS", tiny_gpt2_seq_cls),  # a decoder head: reads the last real token
    "bert-token-cls": ("TOKEN_CLS", tiny_bert_token_cls),
    "bert": ("FEATURE_EXTRACTION", tiny_bert),
}

# task type -> (factory, AutoModel class used to reload it from disk)
CAUSAL_MODELS = {"gpt2": tiny_gpt2, "llama": tiny_llama, "gemma3": tiny_gemma3}
TASK_MODELS = {
    "CAUSAL_LM": (tiny_llama, transformers.AutoModelForCausalLM),
    "SEQ_2_SEQ_LM": (tiny_t5, transformers.AutoModelForSeq2SeqLM),
    "SEQ_CLS": (tiny_bert_seq_cls, transformers.AutoModelForSequenceClassification),
    "TOKEN_CLS": (tiny_bert_token_cls, transformers.AutoModelForTokenClassification),
    "FEATURE_EXTRACTION": (tiny_bert, transformers.AutoModel),
}


def build(factory, seed: int = 0) -> transformers.PreTrainedModel:
    torch.manual_seed(seed)
    return factory().eval()


class WithoutLogitsToKeep(torch.nn.Module):
    """`model` behind a forward that takes neither `logits_to_keep` nor `position_ids` (as some remote-code
    models): its output head then runs at every position, the path scoring falls back to."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs_embeds=None, attention_mask=None, **kwargs):
        if "logits_to_keep" in kwargs:
            raise TypeError("this model's forward takes no logits_to_keep")
        return self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.model.get_input_embeddings()


def random_batch(batch: int = 2, length: int = 7, vocab: int = SMALL_VOCAB, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (batch, length), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def padded_batch(
    rows: list[torch.Tensor], side: str, pad_id: int = 0, width: int | None = None
) -> dict[str, torch.Tensor]:
    """Token rows of any lengths as one batch padded on `side` ("left" or "right") with `pad_id`, at least
    `width` columns wide."""
    width = max([len(row) for row in rows] + [width or 0])
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        columns = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        input_ids[i, columns], mask[i, columns] = torch.as_tensor(row), 1
    return {"input_ids": input_ids, "attention_mask": mask}


def random_rows(lengths: list[int], vocab: int = SMALL_VOCAB, seed: int = 0) -> list[torch.Tensor]:
    """Rows of random token ids (3 and up: never pad, bos or eos), one of each length."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=generator) for n in lengths]


def bigram_llama(vocab: int = 1000, hidden: int = 32, sharpness: float = 0.5, seed: int = 0):
    """A planted problem with a known answer: a Llama whose next token depends only on the current token.

    Attention and MLP outputs are zeroed, so the residual stream is the token's embedding, and the output
    head is set so that the most likely token after x is `successor[x]` (a random permutation). A target
    `successor[x], successor[successor[x]], ...` is produced right after a prompt exactly when the prompt ends
    in x. Ids 0, 1, 2 are pad, bos and eos.

    Returns:
        (model, successor) with successor a LongTensor [vocab].
    """
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        embeddings = torch.randn(vocab, hidden, generator=generator)
        model.model.embed_tokens.weight.copy_(embeddings)
        normed = embeddings / embeddings.pow(2).mean(-1, keepdim=True).sqrt()  # what the final RMSNorm outputs
        successor = torch.randperm(vocab, generator=generator)
        head = torch.empty(vocab, hidden)
        head[successor] = sharpness * normed  # logit(successor[x] | x) = sharpness * |normed_x|^2, the largest
        model.lm_head.weight.copy_(head)
    return model, successor
