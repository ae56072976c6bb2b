"""peft-softhard: soft prompts and PEZ hard prompts as a peft method.

Importing the package registers the SOFTHARD method with peft:

```py
>>> import peft_softhard
>>> from peft import get_peft_model
>>> config = peft_softhard.SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=10, mode="hard")
>>> model = get_peft_model(base_model, config)  # doctest: +SKIP
```
"""

from .registration import register

register()

from .config import SoftHardConfig  # noqa: E402
from .discovery import DiscoveryConfig, DiscoveryResult, run  # noqa: E402
from .encoder import SoftHardPromptEncoder  # noqa: E402
from .ensemble import EnsembleScores, score_ensemble  # noqa: E402
from .export import export_prompt_tuning  # noqa: E402
from .interpretation import (  # noqa: E402
    ProjectedPrompt,
    WaywardnessReport,
    project_prompt,
    to_hard_adapter,
    waywardness,
)
from .mixed_batch import BASE_ADAPTER, load_adapters  # noqa: E402
from .objectives import ClassificationObjective, SequenceClassificationObjective, TargetTextObjective  # noqa: E402
from .projection import nearest_tokens  # noqa: E402
from .resume import load_for_training  # noqa: E402
from .trainer_callback import BestHardPromptCallback  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BASE_ADAPTER",
    "BestHardPromptCallback",
    "ClassificationObjective",
    "DiscoveryConfig",
    "DiscoveryResult",
    "EnsembleScores",
    "ProjectedPrompt",
    "SequenceClassificationObjective",
    "TargetTextObjective",
    "WaywardnessReport",
    "SoftHardConfig",
    "SoftHardPromptEncoder",
    "export_prompt_tuning",
    "load_adapters",
    "load_for_training",
    "nearest_tokens",
    "project_prompt",
    "register",
    "run",
    "score_ensemble",
    "to_hard_adapter",
    "waywardness",
]
