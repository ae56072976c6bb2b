"""Where this package meets peft's internals: the patches (`patches.PATCHES`, checked at import), our own
forward and `generate()` for prompt adapters (`prompted_calls`), and how a peft model's adapters are read
(`adapters`). Nothing outside this sub-package changes peft's behaviour or relies on its private names."""

from .adapters import BASE_ADAPTER, adapter_parameters, adapter_prompt, load_for_training, softhard_adapter
from .patches import PATCHES, register

__all__ = ["BASE_ADAPTER", "PATCHES", "adapter_parameters", "adapter_prompt", "load_for_training", "register",
           "softhard_adapter"]
