"""`SoftHardPromptEncoder`: the module that produces the prompt vectors the model sees.

Soft mode: the prompt is the trainable matrix `embedding.weight` (Lester et al.).
Hard mode (PEZ, Wen et al. Algorithm 1): `embedding.weight` is the continuous copy P. Every forward
projects P to its nearest allowed tokens and feeds exactly what the model's input-embedding module returns
for them; the gradient at that projected point flows straight through to P.
"""

from __future__ import annotations

import logging
import math

import torch
from peft.tuners.tuners_utils import BasePromptEncoder
from torch import nn

from .config import SoftHardConfig
from .projection import module_device, nearest_tokens, vocabulary_size
from .vocabulary import allowed_token_mask, special_token_ids

logger = logging.getLogger(__name__)

# Keys of adapter_model.safetensors besides peft's own "prompt_embeddings" (what the model sees).
CONTINUOUS_KEY = "continuous_prompt"
TOKEN_IDS_KEY = "token_ids"
ALLOWED_KEY = "allowed_token_mask"


class SoftHardPromptEncoder(BasePromptEncoder):
    """Prompt encoder of a SOFTHARD adapter.

    Args:
        config: the adapter's `SoftHardConfig` (`token_dim` filled in).
        word_embeddings: the base model's input-embedding module, `model.get_input_embeddings()`. It is
            referenced, not registered as a submodule, so it adds no parameters and no state-dict keys.
        model_special_ids: special token ids named by the model config, excluded when the config says so.
        tokenizer_source: where to load a tokenizer from when the config names none (the base model's path).
        tokenizer: a tokenizer already in hand; it takes the place of any loading.

    Example:
        ```py
        >>> encoder = model.prompt_encoder["default"]  # doctest: +SKIP
        >>> encoder.prompt_embeddings().shape          # doctest: +SKIP
        torch.Size([10, 576])
        >>> encoder.current_token_ids()                # hard mode: the tokens in use  # doctest: +SKIP
        ```
    """

    def __init__(
        self,
        config: SoftHardConfig,
        word_embeddings: nn.Module,
        *,
        model_special_ids: tuple[int, ...] = (),
        tokenizer_source: str | None = None,
        tokenizer: object | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.__dict__["word_embeddings"] = word_embeddings  # a reference, not a submodule
        self.vocab_size = vocabulary_size(word_embeddings)
        self.model_special_ids = tuple(model_special_ids)
        self.tokenizer_source = tokenizer_source
        self._tokenizer: object | None = tokenizer
        self._allowed_mask: torch.Tensor | None = None
        # The P that `token_ids` is the projection of. Compared by value: optimisers may update P in place
        # without bumping its version counter (fused AdamW does), so nothing cheaper is reliable.
        self._projected_from: torch.Tensor | None = None

        self.embedding = nn.Embedding(config.num_virtual_tokens, config.token_dim)
        self.register_buffer("token_ids", torch.zeros(config.num_virtual_tokens, dtype=torch.long), persistent=False)
        if not config.inference_mode:  # a loaded adapter gets its weights from the file instead
            with torch.no_grad():
                self.embedding.weight.copy_(self._initial_prompt())

    @classmethod
    def for_model(
        cls, config: SoftHardConfig, model: nn.Module, tokenizer: object | None = None
    ) -> SoftHardPromptEncoder:
        """Build the encoder for `model`, filling `token_dim` and `vocab_size` in the config from the model's
        input embeddings and refusing a config that was saved for another model.

        Example:
            ```py
            >>> config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, mode="hard")
            >>> encoder = SoftHardPromptEncoder.for_model(config, model)  # doctest: +SKIP
            ```
        """
        word_embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if not isinstance(word_embeddings, nn.Module):
            raise ValueError(
                f"{type(model).__name__} exposes no input-embedding module through get_input_embeddings(); SOFTHARD "
                "needs one to embed the prompt's tokens. Use a transformers model (or implement that method)."
            )
        probe = torch.zeros(1, dtype=torch.long, device=module_device(word_embeddings))
        embedding_dim = word_embeddings(probe).shape[-1]
        vocab_size = vocabulary_size(word_embeddings)
        if config.inference_mode and config.token_dim is not None and config.token_dim != embedding_dim:
            raise ValueError(
                f"This SOFTHARD adapter was trained for a model with hidden size {config.token_dim}; this model's "
                f"input embeddings have size {embedding_dim}. Load it into the model it was trained for."
            )
        if config.vocab_size is not None and config.vocab_size != vocab_size:
            raise ValueError(
                f"This SOFTHARD adapter was trained for a vocabulary of {config.vocab_size} tokens; this model has "
                f"{vocab_size}. Load it into the model it was trained for."
            )
        config.token_dim, config.vocab_size = embedding_dim, vocab_size
        return cls(
            config,
            word_embeddings,
            model_special_ids=tuple(special_token_ids(model.config)) if hasattr(model, "config") else (),
            tokenizer_source=getattr(model, "name_or_path", None) or None,
            tokenizer=tokenizer,
        )

    # ----------------------------------------------------------------------------------------------- the prompt
    def prompt_embeddings(self) -> torch.Tensor:
        """The [num_virtual_tokens, token_dim] vectors the model sees now (differentiable w.r.t. the prompt)."""
        prompt = self.embedding.weight
        if not self.config.is_hard:
            return prompt
        ids = self.current_token_ids()
        with torch.no_grad():
            hard = self.word_embeddings(ids.to(module_device(self.word_embeddings))).detach().to(prompt.device)
        if prompt.requires_grad and torch.is_grad_enabled():
            # Straight-through: the value is exactly `hard` (P - P.detach() is exactly zero), the gradient reaches P.
            return hard + (prompt - prompt.detach()).to(hard.dtype)
        return hard

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.prompt_embeddings()[indices]

    def current_token_ids(self) -> torch.Tensor:
        """Hard mode: the nearest allowed token of each row of P, recomputed only when P has changed."""
        prompt = self.embedding.weight.detach()
        if not self._is_projection_of(prompt):
            ids, _ = nearest_tokens(
                prompt,
                self.word_embeddings,
                self.allowed_token_ids().to(prompt.device),
                metric=self.config.metric,
                chunk_size=self.config.projection_chunk_size,
            )
            self.token_ids.copy_(ids[:, 0])
            self._projected_from = prompt.clone()
        return self.token_ids

    def _is_projection_of(self, prompt: torch.Tensor) -> bool:
        known = self._projected_from
        return known is not None and known.device == prompt.device and torch.equal(known, prompt)

    @torch.no_grad()
    def set_token_ids(self, token_ids: torch.Tensor) -> None:
        """Make the prompt exactly these tokens: P becomes their embeddings and they are the tokens in use
        (even where a duplicate embedding row would project to another id)."""
        token_ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.token_ids.device)
        if token_ids.shape != self.token_ids.shape:
            raise ValueError(f"Expected {self.token_ids.numel()} token ids, got {tuple(token_ids.shape)}.")
        if token_ids.min() < 0 or token_ids.max() >= self.vocab_size:
            raise ValueError(f"Token ids must lie in [0, {self.vocab_size}), got {token_ids.tolist()}.")
        weight = self.embedding.weight
        weight.copy_(self.word_embeddings(token_ids.to(module_device(self.word_embeddings))).to(weight))
        self.token_ids.copy_(token_ids)
        self._projected_from = weight.detach().clone()

    # ----------------------------------------------------------------------------------------- the vocabulary
    def allowed_token_ids(self) -> torch.Tensor:
        """Ids the prompt may be projected to, from the config's constraints (computed once)."""
        if self._allowed_mask is None:
            self._allowed_mask = allowed_token_mask(
                self.config, self.vocab_size, self.tokenizer(), self.model_special_ids
            )
        return self._allowed_mask.nonzero().flatten()

    def use_vocabulary_of(self, other: SoftHardPromptEncoder) -> None:
        """Project within exactly the allowed vocabulary of `other` (computed there, shared, not recomputed)."""
        other.allowed_token_ids()
        self._allowed_mask = other._allowed_mask
        self._projected_from = None

    def tokenizer(self) -> object | None:
        """The tokenizer named by the config, else the base model's own if it has a usable one, else None."""
        if self._tokenizer is None and (self.config.tokenizer_name_or_path or self.tokenizer_source):
            self._tokenizer = self._load_tokenizer()
        return self._tokenizer

    def _load_tokenizer(self) -> object | None:
        from transformers import AutoTokenizer

        explicit = self.config.tokenizer_name_or_path
        source = explicit or self.tokenizer_source
        kwargs = {k: v for k, v in (self.config.tokenizer_kwargs or {}).items() if k != "trust_remote_code"}
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            problem = None
        except Exception as error:  # the base model's folder need not hold a tokenizer
            tokenizer, problem = None, str(error)
        if tokenizer is not None and len(tokenizer) > self.vocab_size:
            problem = f"it has {len(tokenizer)} tokens and the model's embedding only {self.vocab_size}"
        elif tokenizer is not None and not explicit and len(tokenizer) < self.vocab_size // 2:
            # transformers builds an empty tokenizer from a bare model config: not the model's tokenizer
            problem = f"it covers only {len(tokenizer)} of the model's {self.vocab_size} tokens"
        if problem is None:
            return tokenizer
        if explicit:
            raise ValueError(f"Cannot use the tokenizer {source!r} named by tokenizer_name_or_path: {problem}")
        logger.info("No usable tokenizer at %r (%s); constraints use the model config only", source, problem)
        self.tokenizer_source = None
        return None

    # ------------------------------------------------------------------------------------------ initialisation
    def _initial_prompt(self) -> torch.Tensor:
        config, n = self.config, self.config.num_virtual_tokens
        device = module_device(self.word_embeddings)
        if config.init == "random":
            sample = self.allowed_token_ids()[:4096].to(device)
            scale = self.word_embeddings(sample).float().std().item()
            return torch.randn(n, config.token_dim) * scale
        if config.init == "vocab":
            allowed = self.allowed_token_ids()
            ids = allowed[torch.randint(len(allowed), (n,))]
        else:
            ids = self._init_ids_from_config()
        with torch.no_grad():
            return self.word_embeddings(ids.to(device)).float().cpu()

    def _init_ids_from_config(self) -> torch.Tensor:
        config, n = self.config, self.config.num_virtual_tokens
        if config.init == "text":
            tokenizer = self.tokenizer()
            if tokenizer is None:
                raise ValueError("init='text' needs a tokenizer: set tokenizer_name_or_path in the SoftHardConfig.")
            ids = tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
            if not ids:
                raise ValueError(f"init_text {config.init_text!r} tokenises to no tokens.")
            if len(ids) > n:
                raise ValueError(
                    f"init_text is {len(ids)} tokens long but the prompt has num_virtual_tokens={n}; "
                    "shorten the text or lengthen the prompt."
                )
        else:
            ids = list(config.init_token_ids)
            out_of_range = [i for i in ids if i >= self.vocab_size]
            if out_of_range:
                raise ValueError(
                    f"init_token_ids {out_of_range} are outside this model's vocabulary of {self.vocab_size} tokens."
                )
        ids = (ids * math.ceil(n / len(ids)))[:n]  # repeat to fill the prompt, as peft's TEXT init does
        if config.is_hard:
            allowed = set(self.allowed_token_ids().tolist())
            if not set(ids) <= allowed:
                logger.warning("Some initial tokens are outside the allowed vocabulary; they project elsewhere.")
        return torch.tensor(ids, dtype=torch.long)

    # ------------------------------------------------------------------------------------------ save and load
    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        return model.prompt_encoder[adapter_name].adapter_state_dict()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What adapter_model.safetensors holds: the vectors the model sees, and for hard mode the token ids,
        the continuous copy and the allowed vocabulary, so that training resumes exactly."""
        with torch.no_grad():
            state = {"prompt_embeddings": self.prompt_embeddings().detach().clone()}
            if self.config.is_hard:
                self.allowed_token_ids()
                state[TOKEN_IDS_KEY] = self.current_token_ids().clone()
                state[CONTINUOUS_KEY] = self.embedding.weight.detach().clone()
            if self._allowed_mask is not None:
                state[ALLOWED_KEY] = self._allowed_mask.clone()
        return state

    def _load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """peft's hook (`BasePromptEncoder`) for loading a saved adapter."""
        self.load_adapter_state_dict(state_dict)

    def load_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Restore what `adapter_state_dict` gave, after checking it fits this model."""
        self._check_adapter_state_dict(state_dict)
        with torch.no_grad():
            if self.config.is_hard:
                self.embedding.weight.copy_(state_dict[CONTINUOUS_KEY])
                self.token_ids.copy_(state_dict[TOKEN_IDS_KEY])
            else:
                self.embedding.weight.copy_(state_dict["prompt_embeddings"])
        if ALLOWED_KEY in state_dict:
            self._allowed_mask = state_dict[ALLOWED_KEY].to(torch.bool).cpu().clone()
        if self.config.is_hard:  # the saved ids are the projection of the saved P: use them as they are
            self._projected_from = self.embedding.weight.detach().clone()

    def _check_adapter_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        n, d = self.config.num_virtual_tokens, self.config.token_dim
        required = ["prompt_embeddings"] + ([TOKEN_IDS_KEY, CONTINUOUS_KEY] if self.config.is_hard else [])
        missing = [key for key in required if key not in state_dict]
        if missing:
            raise ValueError(
                f"The adapter weights lack {missing}: the file is not a complete {self.config.mode}-mode SOFTHARD "
                "adapter (was it truncated, or saved by another method?)."
            )
        for key in ("prompt_embeddings", CONTINUOUS_KEY):
            if key not in state_dict:
                continue
            tensor = state_dict[key]
            if tensor.dim() != 2 or tensor.shape[1] != d:
                raise ValueError(
                    f"The adapter's {key} has shape {tuple(tensor.shape)}: it was trained for a model with hidden "
                    f"size {tensor.shape[-1]}, and this model's input embeddings have size {d}. Load it into the "
                    "model it was trained for."
                )
            if tensor.shape[0] != n:
                raise ValueError(
                    f"The adapter's {key} has {tensor.shape[0]} rows but its config says num_virtual_tokens={n}."
                )
            if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
                raise ValueError(f"The adapter's {key} holds NaN/Inf or non-float values; the file is corrupted.")
        if TOKEN_IDS_KEY in state_dict:
            ids = state_dict[TOKEN_IDS_KEY]
            if ids.dtype not in (torch.int32, torch.int64) or ids.shape != (n,):
                raise ValueError(f"The adapter's token_ids must be {n} integers, got {ids.dtype} {tuple(ids.shape)}.")
            if ids.min() < 0 or ids.max() >= self.vocab_size:
                raise ValueError(
                    f"The adapter's token ids reach {int(ids.max())}, beyond this model's vocabulary of "
                    f"{self.vocab_size} tokens: it was trained for another model."
                )
        if ALLOWED_KEY in state_dict and state_dict[ALLOWED_KEY].shape != (self.vocab_size,):
            raise ValueError(
                f"The adapter was trained for a vocabulary of {state_dict[ALLOWED_KEY].shape[0]} tokens and this "
                f"model has {self.vocab_size}; load it into the model it was trained for."
            )

