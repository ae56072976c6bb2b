"""Objectives: what a prompt, prepended to every input, should achieve.

- `interface`: the methods every objective has (`Objective`) and classification objectives add
  (`ClassifierObjective`);
- `scoring`: the engine they run on (rows after a prompt, batched, cached);
- `classification`, `target_text`: the tasks;
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
from .target_text import TargetTextObjective

__all__ = ["ClassificationObjective", "ClassifierObjective", "CorpusObjective", "DistillationObjective", "Objective",
           "SequenceClassificationObjective", "TargetTextObjective"]
