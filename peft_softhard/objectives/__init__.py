"""Objectives: what a prompt, in front of every input or at its template's slot, should achieve.

- `interface`: the methods every objective has (`Objective`) and classification objectives add
  (`ClassifierObjective`);
- `scoring`: the engine they run on (rows after a prompt, batched, cached);
- `classification`, `target_text`: the tasks;
- `templates`: a template's slot for the prompt, and the whole prompt a search finds (`WholePrompt`);
- `corpus`: the language-modelling loss of a body of text (a style or domain prompt);
- `distillation`: a classification task's loss replaced by matching a teacher prompt's answers;
- `fluency`: the loss of a prompt's own tokens.

Example:
    ```py
    >>> objective = ClassificationObjective(tokenizer, texts, labels, template="{text} It was",
    ...                                     label_words=[" bad", " good"])  # doctest: +SKIP
    ```
"""

from .classification import ClassificationObjective, SequenceClassificationObjective
from .corpus import CorpusObjective
from .distillation import DistillationObjective
from .interface import ClassifierObjective, Objective
from .target_text import PairsObjective, TargetTextObjective
from .templates import WholePrompt

__all__ = ["ClassificationObjective", "ClassifierObjective", "CorpusObjective", "DistillationObjective", "Objective",
           "PairsObjective", "SequenceClassificationObjective", "TargetTextObjective", "WholePrompt"]
