"""The allowed vocabulary: which token ids a prompt may be projected to."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch

from .config import SoftHardConfig

logger = logging.getLogger(__name__)

# Markers byte-level BPE (GPT-2, Llama 3, SmolLM) and SentencePiece use for "this token starts a word".
_WORD_START_MARKERS = ("Ġ", "▁", " ")
# Constraints that read the tokens' text, and so need a tokenizer.
TEXT_FILTERS = ("ascii_only", "word_start_only", "round_trip_only")


def special_token_ids(model_config: object) -> set[int]:
    """Special token ids a transformers model config names (bos, eos, pad, ...), whatever the tokenizer."""
    ids: set[int] = set()
    configs = [model_config, getattr(model_config, "get_text_config", lambda: None)()]
    for cfg in configs:
        if cfg is None:
            continue
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id",
                     "cls_token_id", "mask_token_id", "decoder_start_token_id"):
            value = getattr(cfg, name, None)
            values = value if isinstance(value, (list, tuple)) else [value]
            ids.update(int(v) for v in values if isinstance(v, int) and v >= 0)
    return ids


def allowed_token_mask(
    config: SoftHardConfig,
    vocab_size: int,
    tokenizer: object | None = None,
    model_special_ids: Iterable[int] = (),
    among: Iterable[int] | None = None,
) -> torch.Tensor:
    """Boolean mask over the embedding rows: True where the config's constraints allow the token.

    Rows past the tokenizer's length (embedding matrices are often padded) are never real tokens and are
    excluded whenever a tokenizer is known. With `among`, only those ids are judged (the rest are False): which of
    a few tokens a prompt may hold, without reading the whole vocabulary.
    """
    mask = torch.ones(vocab_size, dtype=torch.bool)
    if config.allowed_token_ids is not None:
        _check_in_range("allowed_token_ids", config.allowed_token_ids, vocab_size)
        mask[:] = False
        mask[torch.tensor(config.allowed_token_ids, dtype=torch.long)] = True
    if config.denied_token_ids:
        _check_in_range("denied_token_ids", config.denied_token_ids, vocab_size)
        mask[torch.tensor(config.denied_token_ids, dtype=torch.long)] = False
    if among is not None:  # before the text filters, which then read only these
        judged = torch.zeros(vocab_size, dtype=torch.bool)
        judged[torch.tensor(sorted(set(among)), dtype=torch.long)] = True
        mask &= judged

    needs_tokenizer = [name for name in TEXT_FILTERS if getattr(config, name)]
    if needs_tokenizer and tokenizer is None:
        raise ValueError(
            f"{' and '.join(needs_tokenizer)} need a tokenizer to read the tokens: set tokenizer_name_or_path in "
            "the SoftHardConfig (or load the base model from a folder that has its tokenizer)."
        )
    if config.exclude_special_tokens:
        special = set(model_special_ids)
        if tokenizer is not None:
            special.update(getattr(tokenizer, "all_special_ids", []))
        special = [i for i in special if 0 <= i < vocab_size]
        mask[special] = False
    if tokenizer is not None:
        real_tokens = min(len(tokenizer), vocab_size)
        mask[real_tokens:] = False
        if needs_tokenizer:
            candidates = mask.nonzero().flatten().tolist()
            mask[:] = False
            mask[_pass_text_filters(tokenizer, candidates, config)] = True

    if among is None and not mask.any():
        raise ValueError(
            "The vocabulary constraints leave no token to choose from (check allowed_token_ids, denied_token_ids, "
            "ascii_only, word_start_only and exclude_special_tokens in the SoftHardConfig)."
        )
    logger.debug("Allowed vocabulary: %d of %d tokens", int(mask.sum()), vocab_size)
    return mask


def _pass_text_filters(tokenizer: object, ids: list[int], config: SoftHardConfig) -> list[int]:
    """The ids whose text passes ascii_only / word_start_only / round_trip_only (one batched pass each)."""
    texts = tokenizer.batch_decode([[i] for i in ids])
    keep = [True] * len(ids)
    if config.ascii_only:
        keep = [k and bool(t) and t.isascii() and t.isprintable() for k, t in zip(keep, texts, strict=True)]
    if config.word_start_only:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        keep = [k and _starts_word(p) for k, p in zip(keep, pieces, strict=True)]
    if config.round_trip_only:
        encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
        keep = [k and e == [i] for k, e, i in zip(keep, encoded, ids, strict=True)]
    return [i for i, k in zip(ids, keep, strict=True) if k]


def _starts_word(piece: str | None) -> bool:
    """A word-start marker followed by a letter or digit (so not a run of spaces or punctuation)."""
    return bool(piece) and piece.startswith(_WORD_START_MARKERS) and len(piece) > 1 and piece[1].isalnum()


def _check_in_range(name: str, ids: list[int], vocab_size: int) -> None:
    too_large = [i for i in ids if i >= vocab_size]
    if too_large:
        raise ValueError(
            f"{name} holds ids {too_large[:5]} outside this model's vocabulary of {vocab_size} tokens."
        )
