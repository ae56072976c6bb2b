"""peft-softhard: soft prompts and PEZ hard prompts as a peft method.

Importing the package registers the SOFTHARD method with peft:

```py
>>> from peft import PeftModel
>>> from peft_softhard import project_prompt
>>> model = PeftModel.from_pretrained(base_model, "out/train/n10/best")  # doctest: +SKIP
>>> project_prompt(model, tokenizer).text                               # doctest: +SKIP
```

The layout (docs/architecture.md): `method` (what a prompt is), `placement` (where it goes in text),
`prompt_layout` (where it goes in a batch), `peft_boundary` (every contact with peft's internals), `objectives`,
`optimization` (the one loop and its methods), `reading` (a prompt read as tokens), `serving` (many prompts,
one model), `files`, `app` (CLI, demo).
"""

import sys

from .peft_boundary import register

register()

from .app import models, tasks  # noqa: E402
from .app.reporting import evaluate_prompt  # noqa: E402
from .app.tasks import get_task  # noqa: E402
from .files import checkpoint, export_prompt_tuning, kobold  # noqa: E402
from .method import SoftHardConfig, SoftHardPromptEncoder, nearest_tokens  # noqa: E402
from .objectives import (  # noqa: E402
    ClassificationObjective,
    CorpusObjective,
    DistillationObjective,
    Objective,
    PairsObjective,
    SequenceClassificationObjective,
    TargetTextObjective,
    WholePrompt,
)
from .optimization import discovery, training  # noqa: E402
from .optimization.discovery import DiscoveryConfig, DiscoveryResult, run  # noqa: E402
from .optimization.trainer_callback import BestHardPromptCallback  # noqa: E402
from .optimization.training import TrainConfig, TrainResult, train_prompt  # noqa: E402
from .peft_boundary import BASE_ADAPTER, load_for_training  # noqa: E402
from .placement import adapter_placement, placed_template, prompt_segments, tokenize_with_prompt  # noqa: E402
from .prompt_layout import PROMPT_SLOT_ID  # noqa: E402
from .reading import (  # noqa: E402
    PlacedText,
    ProjectedPrompt,
    WaywardnessReport,
    placed_text,
    project_prompt,
    to_hard_adapter,
    waywardness,
)
from .serving import EnsembleScores, load_adapters, score_ensemble  # noqa: E402

# Module paths of release 0.1.0 that README and docs used, kept importable (`from peft_softhard.training import
# TrainConfig`): each names the module that now holds the same objects.
for _old_name, _module in {"models": models, "tasks": tasks, "checkpoint": checkpoint,
                           "kobold": kobold, "discovery": discovery, "training": training}.items():
    sys.modules.setdefault(f"{__name__}.{_old_name}", _module)

__version__ = "0.1.0"

__all__ = [
    "BASE_ADAPTER",
    "PROMPT_SLOT_ID",
    "BestHardPromptCallback",
    "ClassificationObjective",
    "CorpusObjective",
    "DistillationObjective",
    "DiscoveryConfig",
    "DiscoveryResult",
    "EnsembleScores",
    "Objective",
    "PairsObjective",
    "PlacedText",
    "ProjectedPrompt",
    "SequenceClassificationObjective",
    "SoftHardConfig",
    "SoftHardPromptEncoder",
    "TargetTextObjective",
    "TrainConfig",
    "TrainResult",
    "WaywardnessReport",
    "WholePrompt",
    "adapter_placement",
    "evaluate_prompt",
    "export_prompt_tuning",
    "get_task",
    "load_adapters",
    "load_for_training",
    "nearest_tokens",
    "placed_template",
    "placed_text",
    "project_prompt",
    "prompt_segments",
    "register",
    "run",
    "score_ensemble",
    "to_hard_adapter",
    "tokenize_with_prompt",
    "train_prompt",
    "waywardness",
]
