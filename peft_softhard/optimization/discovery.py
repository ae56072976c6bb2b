"""Hard-prompt discovery behind one `run()`: a pipeline of searches over the whole prompt a user pastes.

The search space is the whole prompt (`WholePrompt`): the user's template, tokens at a slot in it, and the label
words. `run()` takes the stages `DiscoveryConfig.stages` names, in order, each a strategy of the one loop
(`loop.optimize`: batches, scoring, the best prompt, checkpoints, resume, time limits) starting where the
previous stage left the prompt:
- "label_words": the word per class the model is read for (`label_words.LabelWordSearch`);
- "tokens": the tokens at the template's `{prompt}` slot (`placement` puts one where the template has none;
  "prefix" is peft's place, in front), found by a token search (`token_search.METHODS`: growth from nothing,
  PEZ, GCG, ...);
- "template_edits": GrIPS edits of the template's words (`template_edits.TemplateEdits`).
Step 0 of every stage is the prompt it starts from, and a stage's result is kept only if it scores higher on
the validation rows than that start: the search never returns a prompt that scores worse there than the user's
own. Objectives without a template (a target text, a corpus) have the tokens stage only, in front.

Example:
    ```py
    >>> from peft_softhard import ClassificationObjective, DiscoveryConfig, run
    >>> objective = ClassificationObjective(tokenizer, texts, labels, template="Review: {text}\\nSentiment:",
    ...                                     label_words=[" negative", " positive"],
    ...                                     held_out_texts=validation_texts, held_out_labels=validation_labels)
    >>> result = run(model, objective, DiscoveryConfig())  # doctest: +SKIP
    >>> result.whole_prompt.filled(tokenizer), result.label_words  # doctest: +SKIP
    ```
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files.checkpoint import write_text_atomically
from ..method.config import SoftHardConfig
from ..method.encoder import SoftHardPromptEncoder
from ..method.projection import module_device
from ..objectives import ClassificationObjective, Objective
from ..objectives.fluency import perplexity, prompt_lm_losses
from ..objectives.templates import PLACEMENTS, PROMPT, WholePrompt, place_slot
from .label_words import LabelWordScores, LabelWordSearch
from .loop import LoopConfig, check_positive_ints, frozen, optimize
from .template_edits import TemplateEdits, edit_pool
from .token_search import METHODS, ranked_by_gradient, read_back, start_from_vectors

logger = logging.getLogger(__name__)

STAGES = ("label_words", "tokens", "template_edits")
TOKEN_METHODS = ("auto", *METHODS)


@dataclass
class DiscoveryConfig(LoopConfig):
    """How to search: the stages, where the tokens go, each stage's budget and the token search's settings.
    `softhard discover` builds its options from these fields, and the demo runs them, so the three run the same
    search. The defaults are the pipeline `benchmarks/demo_settings.py` chose on training rows."""

    stages: list[str] = field(
        default_factory=lambda: ["label_words", "tokens", "template_edits"],
        metadata={"help": "The searches, in order: label_words, tokens, template_edits (each kept only if it wins "
                  "on validation)."},
    )
    placement: str = field(
        default="end",
        metadata={"help": "Where the tokens go in a template that marks no {prompt}: end (right before the answer), "
                  "before_answer_cue, after_text, or prefix (in front, peft's place)."},
    )
    method: str = field(
        default="auto",
        metadata={"help": "The token search: grow (from nothing, exact), gcg, pez, psgd, pez_refine, or auto: grow at "
                  "a template's slot (a candidate pays only its rows' tails), pez in front of rows (a corpus, a "
                  "target text: a candidate would pay for whole rows)."},
    )
    num_virtual_tokens: int = field(default=4, metadata={"help": "Tokens at the slot (grow: at most this many)."})
    whole_words: bool = field(
        default=True,
        metadata={"help": "Only whole-word tokens that re-tokenize as themselves, so the prompt's text is what was "
                  "scored (also for label words)."},
    )
    steps: int = field(default=16, metadata={"help": "Token search steps (per restart)."})
    label_steps: int = field(default=4, metadata={"help": "Label-word search steps."})
    edit_steps: int = field(default=4, metadata={"help": "Template-edit steps."})
    batch_size: int = field(default=16, metadata={"help": "Training examples per step."})
    eval_interval: int = field(
        default=20, metadata={"help": "Score the prompt in use every this many steps (and at each stage's end; grow: "
                              "after every round of race_steps)."})
    optimizer: str = field(default="adafactor", metadata={"help": "PEZ, projected SGD: 'adafactor' or 'adamw'."})
    lr: float = field(default=0.3, metadata={"help": "Learning rate (PEZ, projected SGD)."})
    weight_decay: float = field(default=0.0, metadata={"help": "Weight decay of the continuous prompt (PEZ)."})
    num_restarts: int = field(default=1, metadata={"help": "Independent token searches from new initial prompts."})
    fluency_weight: float = field(
        default=0.0, metadata={"help": "λ: loss = λ·LM loss of the prompt's own tokens + (1-λ)·task loss."}
    )
    pool_size: int = field(default=16, metadata={"help": "grow: tokens in the pruned pool it appends and swaps in."})
    race_steps: int = field(
        default=4, metadata={"help": "grow: steps (batches) each token is chosen over, the worse half of the "
                             "candidates dropped after each."})
    gcg_top_k: int = field(default=64, metadata={"help": "GCG: candidate tokens per position from the gradient."})
    gcg_candidates: int = field(default=32, metadata={"help": "GCG, grow: swaps scored exactly per step."})
    buffer_size: int = field(
        default=0,
        metadata={"help": "GCG / refinement: the best prompts kept and rescored with each step's candidates (0: "
                  "always take the step's best candidate, as the original GCG)."},
    )
    n_replace: int = field(default=1, metadata={"help": "GCG / refinement: positions changed per candidate."})
    refine_share: float = field(
        default=0.5, metadata={"help": "pez_refine: the share of the steps given to the exact refinement."}
    )
    edit_beam: int = field(default=4, metadata={"help": "Template edits: templates kept (GrIPS's beam)."})
    edit_candidates: int = field(default=8, metadata={"help": "Template edits: edits scored exactly per step."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.method not in TOKEN_METHODS:
            raise ValueError(f"Unknown method {self.method!r}: choose one of {', '.join(TOKEN_METHODS)}.")
        unknown = [stage for stage in self.stages if stage not in STAGES]
        if unknown or not self.stages:
            raise ValueError(f"Unknown or no stages {unknown or self.stages}: choose among {', '.join(STAGES)}.")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"Unknown placement {self.placement!r}: choose one of {', '.join(PLACEMENTS)}.")
        check_positive_ints(self, "num_restarts", "gcg_top_k", "gcg_candidates", "n_replace", "num_virtual_tokens",
                            "label_steps", "edit_steps", "pool_size", "race_steps", "edit_beam", "edit_candidates")
        if not isinstance(self.buffer_size, int) or self.buffer_size < 0:
            raise ValueError(f"buffer_size must be a non-negative integer, got {self.buffer_size!r}.")
        if not 0.0 < self.refine_share <= 1.0:
            raise ValueError(f"refine_share must be in (0, 1], got {self.refine_share!r}.")
        if not 0.0 <= self.fluency_weight < 1.0:
            raise ValueError(f"fluency_weight must be in [0, 1), got {self.fluency_weight}.")

    def token_method(self, template: str | None) -> str:
        """The token search this config runs on a task with `template` (None: rows without one, a corpus):
        `method`, or for "auto" grow where the tokens go after some of each row's tokens (a slot in the template),
        pez in front of the rows."""
        if self.method != "auto":
            return self.method
        at_slot = template is not None and not place_slot(template, self.placement).startswith(PROMPT)
        return "grow" if at_slot else "pez"

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DiscoveryConfig:
        """A named setting (`PRESETS`), with any field overridden."""
        return cls(**{**preset_settings(name), **overrides})


# The PEZ reference language-model setting (YuxinWenRick/hard-prompts-made-easy, prompt_lm/): 10 tokens in front,
# Adafactor at a constant lr 0.3, clip 1.0, 5,000 steps of 16, the projected prompt scored every 100 steps. Its
# init (the label words repeated) and its 5,000 held-out rows are the caller's: `softhard discover --preset` sets
# them.
PRESETS: dict[str, dict[str, Any]] = {
    "pez-reference": {"stages": ["tokens"], "placement": "prefix", "method": "pez", "num_virtual_tokens": 10,
                      "whole_words": False, "optimizer": "adafactor", "lr": 0.3, "weight_decay": 0.0, "steps": 5000,
                      "batch_size": 16, "eval_interval": 100, "grad_clip": 1.0},
}


def preset_settings(name: str) -> dict[str, Any]:
    """The `DiscoveryConfig` fields of a named setting (`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}: choose one of {', '.join(PRESETS)}.")
    return dict(PRESETS[name])


@dataclass
class StageRecord:
    """What one stage of the pipeline did: its start and best (validation scores), whether it was kept."""

    stage: str
    start_score: float
    best_score: float
    kept: bool
    best_step: int
    steps: int
    seconds: float
    prompt: dict[str, Any]  # the stage's best whole prompt (`WholePrompt` fields), kept or not
    best_restart: int = 0


@dataclass
class DiscoveryResult:
    """The best prompt found, and how the search went. For a template's task the whole prompt is `template` (the
    tokens go at its `{prompt}` slot) and `label_words`; `whole_prompt` gives it as one object."""

    token_ids: list[int]
    text: str | None  # the tokens' text
    best_score: float  # on the validation rows (the training loss's negative without them)
    best_step: int
    best_restart: int
    loss_history: list[float]  # training loss at each step (all stages and restarts, in order)
    score_history: list[tuple[int, float]]  # (step, score of the prompt then), all stages and restarts
    steps: int  # taken, all stages (fewer than configured when max_seconds stopped the search)
    seconds: float
    score_seconds: list[float]  # search seconds (scoring not counted) at each score_history entry
    method: str
    perplexity: float | None  # of the prompt's own tokens under the model (causal LMs)
    round_trips: bool | None  # the prompt's text tokenizes back to what was scored
    notes: list[str]
    prompt_config: SoftHardConfig = field(repr=False)
    template: str | None = None  # with {text} and {prompt}; None: no template (the tokens go in front)
    label_words: list[str] | None = None
    stages: list[StageRecord] = field(default_factory=list)
    start_score: float | None = None  # the user's own prompt on the validation rows

    @property
    def whole_prompt(self) -> WholePrompt | None:
        if self.template is None:
            return None
        return WholePrompt(self.template, self.label_words or [], self.token_ids)

    def to_peft_model(self, base_model: nn.Module, adapter_name: str = "default"):
        """A SOFTHARD hard-mode adapter on `base_model` whose prompt is exactly these tokens, where they were found:
        in front of the template, or at its slot (the adapter keeps the template; not the label words, which
        prompt.json holds)."""
        from peft import get_peft_model

        if not self.token_ids:
            raise ValueError("The search found no tokens to put in an adapter (the user's prompt won).")
        placed = {}
        if self.template is not None:
            in_front = self.template.startswith(PROMPT)
            placed = {"placement": "prefix" if in_front else "slot",
                      "template": self.template[len(PROMPT):] if in_front else self.template}
        config = dataclasses.replace(self.prompt_config, mode="hard", init="token_ids", init_token_ids=self.token_ids,
                                     num_virtual_tokens=len(self.token_ids), **placed)
        model = get_peft_model(base_model, config, adapter_name=adapter_name)
        model.prompt_encoder[adapter_name].set_token_ids(torch.tensor(self.token_ids))
        return model


def run(
    model: nn.Module,
    objective: Objective,
    config: DiscoveryConfig | None = None,
    prompt: SoftHardConfig | None = None,
    tokenizer=None,
    checkpoint_dir: str | None = None,
    checkpoint_interval: int | None = None,
    resume: bool = False,
    init_prompt: torch.Tensor | None = None,
) -> DiscoveryResult:
    """Search for the prompt that does best on `objective` (see the module docstring); the model's weights are
    never changed.

    Args:
        model: a causal LM (a peft model is unwrapped to its base model).
        objective: e.g. `ClassificationObjective` (the whole prompt is searched) or `TargetTextObjective`.
        config: the search; default `DiscoveryConfig()`.
        prompt: the tokens' settings (length, start, metric, vocabulary); default `config.num_virtual_tokens` tokens,
            whole words if `config.whole_words`.
        tokenizer: for the vocabulary constraints and the result's text (default: the objective's).
        checkpoint_dir: where to write resumable checkpoints (a folder per stage) every `checkpoint_interval`
            steps (default `config.checkpoint_interval`) and on Ctrl-C or a crash; with `resume=True` the search
            continues from them and ends as an uninterrupted search with the same seed would.
        init_prompt: [n, d] vectors the token search starts from (e.g. a trained soft prompt: PEZ then starts at
            its vectors, the other methods at their projection, its reading); default `prompt.init`.
    """
    config = config or DiscoveryConfig()
    words = {"word_start_only": True, "round_trip_only": True} if config.whole_words else {}
    prompt = dataclasses.replace(
        prompt or SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=config.num_virtual_tokens, **words),
        mode="hard", inference_mode=False,
    )
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    tokenizer = tokenizer if tokenizer is not None else getattr(objective, "tokenizer", None)
    with frozen(model):
        search = _Pipeline(model, objective, config, prompt, tokenizer, checkpoint_dir,
                           checkpoint_interval or config.checkpoint_interval, resume, init_prompt)
        return search.run()


@dataclass
class _Pipeline:
    """The stages of one `run()` (see the module docstring), with the bookkeeping they share."""

    model: nn.Module
    objective: Objective
    config: DiscoveryConfig
    prompt: SoftHardConfig
    tokenizer: Any
    checkpoint_dir: str | None
    checkpoint_interval: int
    resume: bool
    init_prompt: torch.Tensor | None
    notes: list[str] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    scores: list[tuple[int, float]] = field(default_factory=list)
    score_seconds: list[float] = field(default_factory=list)
    seconds: float = 0.0
    _objectives: dict[tuple[str, tuple[str, ...]], ClassificationObjective] = field(default_factory=dict)
    _scores: dict[tuple, float] = field(default_factory=dict)
    _label_scores: LabelWordScores | None = None  # during the label-word stage

    def run(self) -> DiscoveryResult:
        config, whole = self.config, isinstance(self.objective, ClassificationObjective)
        stages = [stage for stage in config.stages if whole or stage == "tokens"]
        if len(stages) < len(config.stages):
            self.notes.append(f"stages {[s for s in config.stages if s not in stages]} need a template and label "
                              "words (a ClassificationObjective): skipped")
        if not stages:
            raise ValueError("No stage of this search applies to this objective: include 'tokens' in stages.")
        if whole:  # the user's own prompt: their template (the tokens' slot goes in with the tokens stage)
            current: Any = WholePrompt(self.objective.template, self.objective.label_words, [])
            start_score = self.score(current)
        else:  # no prompt of the user's to start from: the token search's own start is its step 0
            current, start_score = torch.zeros(0, dtype=torch.long), -math.inf
        score, records = start_score, []
        for name in stages:
            if config.max_seconds is not None and self.seconds >= config.max_seconds:
                self.notes.append(f"max_seconds reached before the {name} stage")
                break
            record, best = self.stage(name, current, score)
            records.append(record)
            if record.kept:
                current, score = best, record.best_score
        if not whole and records:
            start_score = self.scores[0][1]  # the token search's starting prompt
        return self.result(current, score, start_score, records)

    # ----------------------------------------------------------------------------------------------- scoring
    def score(self, prompt: Any) -> float:
        """Validation score of a whole prompt (each scored once: a stage's step 0 is the prompt the stage before
        it ended with), or of token ids for an objective without a template."""
        if not isinstance(prompt, WholePrompt):
            return self.objective.score(self.model, prompt)
        key = (prompt.template, tuple(prompt.label_words), tuple(prompt.token_ids))
        if key not in self._scores:
            if self._label_scores is not None and self._label_scores.covers(prompt):
                self._scores[key] = self._label_scores.accuracy(prompt.label_words)
            else:
                objective = self.objective_for(prompt)
                self._scores[key] = objective.score(self.model, torch.tensor(prompt.token_ids, dtype=torch.long))
        return self._scores[key]

    def objective_for(self, prompt: WholePrompt) -> ClassificationObjective:
        """The objective with `prompt`'s template and label words (re-encoded once per pair)."""
        key = (prompt.template, tuple(prompt.label_words))
        if key not in self._objectives:
            self._objectives[key] = self.objective.for_prompt(prompt)[0]
        return self._objectives[key]

    # ------------------------------------------------------------------------------------------------ stages
    def stage(self, name: str, current: Any, current_score: float) -> tuple[StageRecord, Any]:
        """Run one stage from `current` (which scores `current_score`); (its record, its best prompt)."""
        config = self.config
        if name == "tokens" and isinstance(current, WholePrompt):  # the slot for the tokens (its step 0: empty)
            current = WholePrompt(self.placed(current.template), current.label_words, current.token_ids)
        steps = {"label_words": config.label_steps, "tokens": config.steps, "template_edits": config.edit_steps}[name]
        outcome = self._stage_dir(name) / "outcome.json" if self.checkpoint_dir else None
        if self.resume and outcome is not None and outcome.exists():  # finished before an interruption
            saved = json.loads(outcome.read_text())
            if saved["configured_steps"] == steps:  # (a run continued to more steps goes on from its checkpoint)
                self._add_history(saved["losses"], saved["scores"], saved["score_seconds"], saved["seconds"])
                record = StageRecord(**saved["record"])
                return record, self._prompt_from(record.prompt, current)
        remaining = None if config.max_seconds is None else config.max_seconds - self.seconds
        every = config.race_steps if name == "tokens" and self.method == "grow" else config.eval_interval
        loop = dataclasses.replace(config, steps=steps, max_seconds=remaining, eval_interval=every)
        objective = self.objective_for(current) if isinstance(current, WholePrompt) else self.objective
        score = self.score if name != "tokens" or not isinstance(current, WholePrompt) else (
            lambda ids: self.score(WholePrompt(current.template, current.label_words, ids.tolist())))
        tie_break = self._fluency if name == "tokens" and config.fluency_weight else None
        # the tokens stage scores many prompts with one template: its validation rows' heads are run once
        reused = name == "tokens" and isinstance(objective, ClassificationObjective)
        reusing = objective.reusing_heads(self.model) if reused else contextlib.nullcontext()
        if name == "label_words" and objective.has_held_out:  # every choice of words from one validation forward
            self._label_scores = LabelWordScores(self.model, objective, current)
        with reusing:
            state, strategy = optimize(self._strategy_factory(name, objective, current), objective, loop, score,
                                       tie_break=tie_break, restarts=config.num_restarts if name == "tokens" else 1,
                                       checkpoint_dir=self._stage_dir(name) if self.checkpoint_dir else None,
                                       checkpoint_interval=self.checkpoint_interval, resume=self.resume,
                                       description=name if name != "tokens" else self.method)
        self._label_scores = None
        self._add_history(state.losses, state.scores, state.score_seconds, state.seconds)
        strategy.load_tensors(state.best.tensors)
        best = strategy.prompt()
        if name == "tokens" and isinstance(current, WholePrompt):
            best = WholePrompt(current.template, current.label_words, best.tolist())
        record = StageRecord(name, current_score, state.best.score, state.best.score > current_score,
                             state.best.step, len(state.losses), round(state.seconds, 1), self._fields(best),
                             state.best.restart)
        if outcome is not None:
            write_text_atomically(outcome, json.dumps({
                "record": dataclasses.asdict(record), "configured_steps": steps, "losses": state.losses,
                "scores": state.scores, "score_seconds": state.score_seconds, "seconds": state.seconds}))
        return record, best

    def _add_history(self, losses: list[float], scores: list, score_seconds: list[float], seconds: float) -> None:
        """One stage's curves after the earlier stages' (its steps counted on from theirs)."""
        offset = len(self.losses)
        self.losses += losses
        self.scores += [(offset + step, value) for step, value in scores]
        self.score_seconds += [self.seconds + s for s in score_seconds]
        self.seconds += seconds

    def _strategy_factory(self, name: str, objective: Any, current: Any):
        """`optimize`'s `start(restart)` for stage `name` on `objective`, from the prompt `current`."""
        model, config = self.model, self.config
        ids = torch.tensor(current.token_ids if isinstance(current, WholePrompt) else current.tolist(),
                           dtype=torch.long)
        if name == "label_words":
            return lambda restart: LabelWordSearch(model, objective, ids, self._allowed())
        if name == "template_edits":
            gradient_tokens = ranked_by_gradient(model, objective, ids, self._allowed(), list(range(
                min(config.batch_size, objective.num_train))), config.edit_candidates)
            pool = edit_pool(objective.instruction, objective.template,
                             [self.tokenizer.decode([token]) for token in gradient_tokens.tolist()])
            return lambda restart: TemplateEdits(model, objective, ids, pool, config.edit_beam, config.edit_candidates,
                                                 config.seed)

        def tokens(restart: int):
            torch.manual_seed(config.seed + restart)
            encoder = SoftHardPromptEncoder.for_model(dataclasses.replace(self.prompt), model, self.tokenizer)
            encoder.to(module_device(model))
            if self.init_prompt is not None:
                start_from_vectors(encoder, self.init_prompt)
            return METHODS[self.method](config, model, objective, encoder)

        return tokens

    @property
    def method(self) -> str:
        """The token search this run uses (`DiscoveryConfig.token_method`)."""
        template = self.objective.template if isinstance(self.objective, ClassificationObjective) else None
        return self.config.token_method(template)

    def placed(self, template: str) -> str:
        """`template` with the tokens' slot where `config.placement` says (a template's own slot stays)."""
        return place_slot(template, self.config.placement)

    def _allowed(self) -> torch.Tensor:
        """The token ids a search may use (the prompt's vocabulary constraints)."""
        encoder = SoftHardPromptEncoder.for_model(dataclasses.replace(self.prompt), self.model, self.tokenizer)
        return encoder.allowed_token_ids()

    def _fluency(self, ids: torch.Tensor) -> float:  # with a fluency weight, the more natural of two equal prompts
        return -prompt_lm_losses(self.model, ids[None])[0].item()

    def _stage_dir(self, name: str) -> Path:
        """A stage's checkpoints: a folder of its own, or `checkpoint_dir` itself for a search of one stage (the
        layout of earlier releases, whose runs continue)."""
        return Path(self.checkpoint_dir) / name if len(self.config.stages) > 1 else Path(self.checkpoint_dir)

    def _fields(self, prompt: Any) -> dict[str, Any]:
        if isinstance(prompt, WholePrompt):
            return dataclasses.asdict(prompt)
        return {"token_ids": prompt.tolist()}

    def _prompt_from(self, fields: dict[str, Any], current: Any) -> Any:
        if isinstance(current, WholePrompt):
            return WholePrompt(**fields)
        return torch.tensor(fields["token_ids"], dtype=torch.long)

    # ------------------------------------------------------------------------------------------------ result
    def slot_template(self) -> str | None:
        """The template of an objective without label words whose tokens go at its own slot (pairs), else None."""
        template = getattr(self.objective, "template", None)
        return template if isinstance(template, str) and PROMPT in template else None

    def result(self, best: Any, score: float, start_score: float, records: list[StageRecord]) -> DiscoveryResult:
        ids = best.token_ids if isinstance(best, WholePrompt) else best.tolist()
        text, round_trips, notes = read_back(self.tokenizer, ids, self.prompt)
        if isinstance(best, WholePrompt) and self.tokenizer is not None:
            round_trips = best.round_trips(self.tokenizer, list(self.objective.texts["train"][:32]))
            notes = [n for n in notes if "NOT tokenize" not in n]
            if not round_trips:
                notes.append("the filled template does NOT tokenize back to what was scored for every row: paste it "
                             "and check, or search with whole_words=True")
        kept = [r for r in records if r.kept]
        best_record = kept[-1] if kept else None
        return DiscoveryResult(
            token_ids=ids, text=text, best_score=score, best_step=best_record.best_step if best_record else 0,
            best_restart=best_record.best_restart if best_record else 0, loss_history=self.losses,
            score_history=self.scores, steps=len(self.losses),
            seconds=self.seconds, score_seconds=self.score_seconds, method=self.method,
            perplexity=perplexity(self.model, torch.tensor(ids, dtype=torch.long, device=module_device(self.model))),
            round_trips=round_trips, notes=self.notes + notes, prompt_config=self.prompt,
            template=best.template if isinstance(best, WholePrompt) else self.slot_template(),
            label_words=list(best.label_words) if isinstance(best, WholePrompt) else None, stages=records,
            start_score=start_score,
        )
