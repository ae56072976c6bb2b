"""Resume training a saved SOFTHARD adapter.

`PeftModel.from_pretrained(..., is_trainable=True)` is refused by peft for every prompt method; this is
the path that gives back a trainable model, with the continuous PEZ copy and the allowed vocabulary
exactly as saved.
"""

from __future__ import annotations

from typing import Any

from peft import PeftConfig, PeftModel

from .registration import is_softhard


def load_for_training(base_model: Any, adapter_path: str, adapter_name: str = "default", **kwargs: Any) -> PeftModel:
    """Load a saved SOFTHARD adapter onto `base_model`, ready to train further.

    Example:
        ```py
        >>> model = load_for_training(base_model, "out/checkpoint-200")  # doctest: +SKIP
        >>> trainer = Trainer(model=model, ...)                           # doctest: +SKIP
        ```
    """
    config = PeftConfig.from_pretrained(adapter_path)
    if not is_softhard(config):
        raise ValueError(f"{adapter_path} holds a {config.peft_type} adapter; load_for_training resumes SOFTHARD ones.")
    model = PeftModel.from_pretrained(base_model, adapter_path, adapter_name=adapter_name, config=config, **kwargs)
    config.inference_mode = False
    model.prompt_encoder[adapter_name].requires_grad_(True)
    for name, parameter in model.named_parameters():  # extra trained modules, e.g. a SEQ_CLS head
        if f"modules_to_save.{adapter_name}." in name:
            parameter.requires_grad_(True)
    model.train()
    return model
