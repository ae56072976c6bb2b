"""Template edits: GrIPS (Prasad et al. 2023) on the words of the user's template, scored exactly.

A strategy on the one loop (`loop.optimize`). The template is a sequence of phrases (a word with the space
before it, a line break, `{text}`, `{prompt}`). Each step makes `edit_candidates` edits of templates in the
beam — delete a phrase, swap two, add a phrase from the pool, replace one by a pool phrase — scores them and
the beam exactly on the step's batch (the tokens at the slot and the label words fixed), and keeps the
`edit_beam` best: the template in use is the best, and it never gets worse on the batch that judged it. The
pool (`edit_pool`): the phrases (one to three words) of the task's instruction and of the template itself, the
whole instruction as a line, and whole-word tokens ranked by the loss's gradient at the slot.
`{text}` and `{prompt}` are never deleted or swapped. Step 0 is the user's own template.

Example:
    ```py
    >>> pool = edit_pool("Classify the sentiment.", objective.template, words=[" great", " awful"])  # doctest: +SKIP
    >>> search = TemplateEdits(model, objective, prompt_ids, pool, beam=4, candidates=16, seed=0)  # doctest: +SKIP
    ```
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from ..distributed import combine, global_mean, shard
from ..objectives.templates import PROMPT, TEXT, WholePrompt

PHRASE = re.compile(r"\{text\}|\{prompt\}|\n|[ \t]*[^\s{]+|[ \t]+|\{")
EDITS = ("delete", "swap", "add", "replace")


def split_phrases(template: str) -> list[str]:
    """The template's phrases, in order; joined they give the template back."""
    phrases = PHRASE.findall(template)
    if "".join(phrases) != template:  # every character is matched by one of the alternatives
        raise ValueError(f"Cannot split the template {template!r} into phrases.")
    return phrases


def phrase_pool(*texts: str | None, longest: int = 3) -> list[str]:
    """Phrases of one to `longest` words of each text (the task's instruction, the template), each with the
    space before it: what an edit may add or put in place of a phrase."""
    pool: list[str] = []
    for text in texts:
        words = (text or "").replace(TEXT, " ").replace(PROMPT, " ").split()
        for size in range(1, longest + 1):
            pool += [" " + " ".join(words[i : i + size]) for i in range(len(words) - size + 1)]
    return list(dict.fromkeys(pool))


def edit_pool(instruction: str | None, template: str, words: list[str]) -> list[str]:
    """GrIPS's pool: the phrases of the instruction and the template (`phrase_pool`), the whole instruction as a
    line of its own (GrIPS adds whole phrases too), and `words` (whole-word tokens ranked by the loss's gradient
    at the slot)."""
    pool = phrase_pool(instruction, template)
    if instruction:
        pool.append(instruction.strip() + "\n")
    return pool + words


class TemplateEdits:
    """The strategy (see the module docstring).

    Args:
        model: the frozen causal LM.
        objective: a `ClassificationObjective`; its template is the start and its label words stay.
        prompt_ids: [n] the tokens at the slot, fixed during this search.
        pool: the phrases an edit may add or put in place of another.
        beam: templates kept; candidates: edits scored per step; seed: seeds the edits.
    """

    def __init__(self, model: nn.Module, objective: Any, prompt_ids: torch.Tensor, pool: list[str], beam: int,
                 candidates: int, seed: int) -> None:
        self.model, self.objective, self.prompt_ids = model, objective, prompt_ids
        start = split_phrases(objective.template)
        self.phrases = list(dict.fromkeys(start + list(pool)))  # the inventory; a template is indices into it
        self.fixed = {self.phrases.index(p) for p in (TEXT, PROMPT) if p in self.phrases}
        self.pool = [self.phrases.index(p) for p in pool if p not in (TEXT, PROMPT)]
        self.beam_size, self.count = beam, candidates
        self.beam = [torch.tensor([self.phrases.index(p) for p in start])]
        self.generator = torch.Generator().manual_seed(seed)

    def template(self, indices: torch.Tensor) -> str:
        return "".join(self.phrases[i] for i in indices.tolist())

    def step(self, indices: list[int]) -> float:
        local = shard(indices)
        candidates = list({tuple(c.tolist()): c for c in self.beam + self.edits()}.values())  # the beam first
        templates = [self.template(c) for c in candidates]
        losses = self.objective.template_losses(self.model, templates, self.prompt_ids, local)
        losses = combine(losses, len(local), len(indices))
        order = losses.argsort().tolist()
        self.beam = [candidates[i] for i in order[: self.beam_size]]
        return global_mean(losses[0].item(), len(local), len(indices))  # the template the step began with

    def edits(self) -> list[torch.Tensor]:
        """`count` random edits of random templates in the beam (an edit that cannot apply is skipped)."""
        out = []
        for _ in range(self.count):
            source = self.beam[self._pick(len(self.beam))]
            edited = self.edit(source.tolist(), EDITS[self._pick(len(EDITS))])
            if edited is not None:
                out.append(torch.tensor(edited))
        return out

    def edit(self, phrases: list[int], kind: str) -> list[int] | None:
        movable = [i for i, phrase in enumerate(phrases) if phrase not in self.fixed]
        if kind == "add" and self.pool:
            at = self._pick(len(phrases) + 1)
            return phrases[:at] + [self.pool[self._pick(len(self.pool))]] + phrases[at:]
        if kind == "replace" and movable and self.pool:
            phrases = list(phrases)
            phrases[movable[self._pick(len(movable))]] = self.pool[self._pick(len(self.pool))]
            return phrases
        if kind == "delete" and movable:
            at = movable[self._pick(len(movable))]
            return phrases[:at] + phrases[at + 1 :]
        if kind == "swap" and len(movable) > 1:
            first, second = (movable[self._pick(len(movable))] for _ in range(2))
            phrases = list(phrases)
            phrases[first], phrases[second] = phrases[second], phrases[first]
            return phrases
        return None

    def _pick(self, count: int) -> int:
        return int(torch.randint(count, (1,), generator=self.generator))

    def prompt(self) -> WholePrompt:
        return WholePrompt(self.template(self.beam[0]), self.objective.label_words, self.prompt_ids.tolist())

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"template_phrases": self.beam[0].clone()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.beam = [tensors["template_phrases"].clone(), *self.beam[1:]]

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "beam": [b.clone() for b in self.beam],
                "phrases": list(self.phrases)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["phrases"] != self.phrases:
            raise ValueError("This checkpoint's template edits used another phrase pool: finish that run with the "
                             "same task and settings, or delete the checkpoint to start over.")
        self.generator.set_state(state["generator"])
        self.beam = [b.clone() for b in state["beam"]]
