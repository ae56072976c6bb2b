"""Track and save the best projected hard prompt while the Hugging Face Trainer trains a hard-mode adapter."""

from __future__ import annotations

import os
from typing import Any

from transformers import TrainerCallback

from ..files.checkpoint import save_adapter_atomically
from ..peft_boundary.adapters import softhard_adapter
from .loop import BestPrompt, frozen


class BestHardPromptCallback(TrainerCallback):
    """Every `eval_steps` steps (and at the end), score the tokens a hard-mode SOFTHARD adapter is using with
    `objective.score`; whenever they beat every earlier score, save the adapter (rank 0 only).

    Training a hard-mode adapter with the Trainer is PEZ already (the encoder projects and passes the gradient
    straight through); this callback adds PEZ's "keep the best projected prompt".

    Example:
        ```py
        >>> callback = BestHardPromptCallback(objective, eval_steps=100)                      # doctest: +SKIP
        >>> Trainer(model=peft_model, args=args, train_dataset=data, callbacks=[callback]).train()  # doctest: +SKIP
        >>> callback.best.token_ids, callback.best.score                                      # doctest: +SKIP
        ```
    """

    def __init__(
        self, objective: Any, eval_steps: int = 50, save_directory: str | None = None, adapter_name: str | None = None
    ) -> None:
        if eval_steps < 1:
            raise ValueError(f"eval_steps must be a positive integer, got {eval_steps}.")
        self.objective = objective
        self.eval_steps = eval_steps
        self.save_directory = save_directory
        self.adapter_name = adapter_name
        self.best = BestPrompt()
        self.history: list[tuple[int, float]] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.eval_steps == 0:
            self._check(args, state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.history or self.history[-1][0] != state.global_step:
            self._check(args, state, model)

    def _check(self, args, state, model) -> None:
        model = getattr(model, "module", model)  # unwrap DistributedDataParallel
        adapter, config, encoder = softhard_adapter(model, self.adapter_name)
        if not config.is_hard:
            raise ValueError(f"BestHardPromptCallback needs a hard-mode SOFTHARD adapter; {adapter!r} is soft.")
        ids = encoder.current_token_ids().clone()
        base = model.get_base_model()
        with frozen(base):
            score = self.objective.score(base, ids)
        self.history.append((state.global_step, score))
        if self.best.update({"token_ids": ids}, score, state.global_step) and state.is_world_process_zero:
            directory = self.save_directory or os.path.join(args.output_dir, "best_hard_prompt")
            save_adapter_atomically(model, directory, adapter)
