"""`SoftHardConfig`: the configuration of a soft or PEZ-hard prompt adapter."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PromptLearningConfig
from peft.utils import PeftType

PEFT_TYPE_NAME = "SOFTHARD"  # the member this package adds to peft's PeftType
MODES = ("soft", "hard")
INITS = ("random", "vocab", "text", "token_ids")
METRICS = ("cosine", "dot", "l2")
# Where the prompt goes in an input (docs/placement.md): in front of it (peft's layout), at the `{prompt}` slot of
# `template`, as the chat template's system turn, or at the end of the last user turn.
PLACEMENTS = ("prefix", "slot", "system", "suffix")


@dataclass
class SoftHardConfig(PromptLearningConfig):
    """Configuration of a SOFTHARD adapter: a prompt of `num_virtual_tokens` vectors at its `placement` in the
    input (in front of it by default).

    In `mode="soft"` the prompt is a free matrix (Lester et al. 2021). In `mode="hard"` a continuous copy is
    trained and every forward feeds the embeddings of its nearest allowed tokens (PEZ, Wen et al. 2023), so
    the model always sees a real token sequence.

    Example:
        ```py
        >>> import peft_softhard
        >>> from peft import get_peft_model
        >>> config = peft_softhard.SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=10, mode="hard")
        >>> model = get_peft_model(base_model, config)  # doctest: +SKIP
        >>> at_slot = peft_softhard.SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, placement="slot",
        ...                                        template="Review: {text}\n{prompt}Sentiment:")
        ```
    """

    mode: str = field(default="soft", metadata={"help": "'soft' (free prompt vectors) or 'hard' (PEZ: real tokens)."})
    init: str = field(
        default="vocab",
        metadata={
            "help": "How the prompt starts: 'vocab' (embeddings of tokens sampled from the allowed vocabulary), "
            "'random' (Gaussian with the embedding matrix's scale), 'text' (the tokens of `init_text`, repeated "
            "to fill the prompt) or 'token_ids' (the ids in `init_token_ids`, repeated)."
        },
    )
    init_text: str | None = field(default=None, metadata={"help": "Text whose tokens start the prompt (init='text')."})
    init_token_ids: list[int] | None = field(
        default=None, metadata={"help": "Token ids that start the prompt (init='token_ids')."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Tokenizer used for init='text' and for the vocabulary constraints; defaults to the base "
            "model's own name or path."
        },
    )
    tokenizer_kwargs: dict | None = field(
        default=None, metadata={"help": "Keyword arguments for AutoTokenizer.from_pretrained (no remote code)."}
    )
    metric: str = field(
        default="cosine",
        metadata={"help": "Similarity used to project a vector to its nearest token: 'cosine', 'dot' or 'l2'."},
    )
    exclude_special_tokens: bool = field(
        default=True, metadata={"help": "Keep special tokens (bos, eos, pad, ...) out of the projection."}
    )
    ascii_only: bool = field(default=False, metadata={"help": "Allow only tokens that decode to printable ASCII."})
    word_start_only: bool = field(
        default=False,
        metadata={"help": "Allow only tokens that begin a word: a leading space or '▁', then a letter or digit."},
    )
    round_trip_only: bool = field(
        default=False,
        metadata={
            "help": "Allow only tokens that come back as themselves when decoded and re-encoded alone; with "
            "word_start_only it makes a discovered prompt's text re-tokenize to the same ids."
        },
    )
    allowed_token_ids: list[int] | None = field(
        default=None, metadata={"help": "If set, only these token ids may be projected to."}
    )
    denied_token_ids: list[int] | None = field(
        default=None, metadata={"help": "Token ids that may never be projected to."}
    )
    projection_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Vocabulary rows scored at once when projecting; default keeps each chunk near 64 MiB."},
    )
    placement: str = field(
        default="prefix",
        metadata={
            "help": "Where the prompt goes: 'prefix' (in front of the input), 'slot' (at {prompt} in `template`), "
            "'system' (the chat template's system turn) or 'suffix' (the end of the last user turn). Other than "
            "'prefix', inputs carry a slot mark: tokenize them with peft_softhard.tokenize_with_prompt."
        },
    )
    template: str | None = field(
        default=None,
        metadata={"help": "The input around an example's text, with {text} once: 'Review: {text}\\nSentiment:'. "
                          "With placement='slot' it marks the slot with {prompt} (and is required); with 'system' or "
                          "'suffix' it is the user message."},
    )
    vocab_size: int | None = field(
        default=None,
        metadata={"help": "Rows of the model's input embedding; filled in from the model and checked on loading."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.peft_type = PeftType(PEFT_TYPE_NAME)
        self.mode = _choice("mode", self.mode, MODES)
        self.init = _choice("init", self.init, INITS)
        self.metric = _choice("metric", self.metric, METRICS)
        self.placement = _choice("placement", self.placement, PLACEMENTS)
        self._check_template()
        _require_positive_int("num_virtual_tokens", self.num_virtual_tokens, "e.g. num_virtual_tokens=10")
        for name in ("token_dim", "vocab_size", "projection_chunk_size"):
            if getattr(self, name) is not None:
                _require_positive_int(name, getattr(self, name), "or leave it unset")
        for name in ("exclude_special_tokens", "ascii_only", "word_start_only", "round_trip_only", "inference_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        if self.num_transformer_submodules not in (None, 1):
            raise ValueError(
                "SOFTHARD prepends the prompt to the (encoder) input only, so num_transformer_submodules must be 1 "
                f"or unset; got {self.num_transformer_submodules!r}."
            )
        self.num_transformer_submodules = 1

        if self.init == "text":
            if not isinstance(self.init_text, str) or not self.init_text.strip():
                raise ValueError("init='text' needs a non-empty init_text, e.g. init_text='Classify the sentiment:'.")
        if self.init == "token_ids":
            if not self.init_token_ids:
                raise ValueError("init='token_ids' needs init_token_ids, a non-empty list of token ids.")
            if len(self.init_token_ids) > self.num_virtual_tokens:
                raise ValueError(
                    f"init_token_ids has {len(self.init_token_ids)} ids but the prompt has only "
                    f"num_virtual_tokens={self.num_virtual_tokens}; shorten the list or lengthen the prompt."
                )
        for name in ("init_token_ids", "allowed_token_ids", "denied_token_ids"):
            ids = getattr(self, name)
            if ids is None:
                continue
            if not isinstance(ids, (list, tuple)) or not all(_is_int(i) and i >= 0 for i in ids):
                raise ValueError(f"{name} must be a list of non-negative integer token ids, got {ids!r}.")
            setattr(self, name, [int(i) for i in ids])
        if self.allowed_token_ids is not None and not self.allowed_token_ids:
            raise ValueError("allowed_token_ids is empty: no token could ever be chosen. Leave it unset to allow all.")
        if self.tokenizer_kwargs is not None:
            if not isinstance(self.tokenizer_kwargs, dict):
                raise ValueError(f"tokenizer_kwargs must be a dict, got {self.tokenizer_kwargs!r}.")
            # A shared adapter config must never be able to run code on the loading machine.
            self.tokenizer_kwargs = {k: v for k, v in self.tokenizer_kwargs.items() if k != "trust_remote_code"}

    def _check_template(self) -> None:
        example = "e.g. template='Review: {text}\\n{prompt}Sentiment:'"
        if self.template is None:
            if self.placement == "slot":
                raise ValueError(f"placement='slot' needs a template with {{text}} and {{prompt}} once each, "
                                 f"{example}.")
            return
        if not isinstance(self.template, str) or self.template.count("{text}") != 1:
            raise ValueError(f"The template must contain {{text}} once (where an example goes), got {self.template!r}.")
        slots = self.template.count("{prompt}")
        if self.placement == "slot" and slots != 1:
            raise ValueError(f"placement='slot' needs a template with {{text}} and {{prompt}} once each, {example}; "
                             f"got {self.template!r}.")
        if self.placement != "slot" and slots:
            raise ValueError(f"The template marks a {{prompt}} slot but placement is {self.placement!r}: set "
                             "placement='slot', or take {prompt} out of the template.")

    def require_prefix(self, what: str) -> None:
        """Raise a clear error unless the prompt goes in front of the input: `what` (a file format, an engine)
        can only put it there."""
        if self.placement != "prefix":
            raise ValueError(f"{what} puts a prompt in front of the input, and this adapter's goes at "
                             f"placement={self.placement!r}; it would not mean the same there. Export it as text "
                             "(`softhard export --to text`, the template with the prompt in place) instead.")

    @property
    def is_hard(self) -> bool:
        return self.mode == "hard"


def is_softhard(config: object) -> bool:
    """Whether a peft config (of any method) is a SOFTHARD adapter's."""
    return getattr(config, "peft_type", None) == PEFT_TYPE_NAME


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_positive_int(name: str, value: object, hint: str) -> None:
    if value is None:
        raise ValueError(f"{name} is required: set it to a positive integer ({hint}).")
    if not _is_int(value) or value <= 0:
        raise ValueError(f"{name} must be a positive integer ({hint}), got {value!r}.")


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value.lower() not in allowed:
        raise ValueError(f"Unknown {name} {value!r}: choose one of {', '.join(allowed)}.")
    return value.lower()
