"""Reading a learned prompt as tokens, and checking how much of its behaviour the reading keeps.

A soft prompt's projection is an interpretation, not the prompt (Khashabi et al. 2022, "prompt
waywardness"): the vectors can sit far from every token, and the readable tokens can behave differently.
`project_prompt` reports how far each vector is from its token; `waywardness` scores both on a task;
`placed_text` writes the prompt as text where its adapter puts it (what a user pastes) and checks it round-trips.

Example:
    ```py
    >>> reading = project_prompt(peft_model, tokenizer, top_k=5)       # doctest: +SKIP
    >>> print(reading.table())                                          # doctest: +SKIP
    >>> report = waywardness(peft_model, objective)                     # doctest: +SKIP
    >>> report.soft_score, report.projected_score                       # doctest: +SKIP
    ```
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from .method.projection import distance, nearest_tokens, similarity
from .objectives.templates import PROMPT, TEXT, encode_example, text_ids
from .optimization.loop import frozen
from .peft_boundary.adapters import softhard_adapter
from .placement import placed_template


@dataclass
class TokenCandidate:
    token_id: int
    similarity: float  # under the metric: cosine, dot product, or minus the L2 distance
    distance: float  # cosine: 1 - cos; l2 and dot: Euclidean distance
    text: str | None = None


@dataclass
class ProjectedPrompt:
    """A prompt read as tokens: one token per virtual position, with its top-k neighbours and statistics.

    `token_ids[i]` is the token position i is read as (for a hard prompt: exactly the token in use).
    """

    token_ids: list[int]
    similarities: list[float]
    distances: list[float]
    candidates: list[list[TokenCandidate]]
    metric: str
    mode: str
    constrained: bool  # read within the adapter's allowed vocabulary (else the whole vocabulary)
    mean_distance: float
    max_distance: float
    special_share: float  # positions whose token is a special token
    non_word_share: float | None  # positions whose (non-special) token has no letter or digit; None: no tokenizer
    text: str | None = None
    tokens: list[str] | None = field(default=None, repr=False)

    def table(self) -> str:
        """The reading as a plain-text table: position, token, similarity, distance, runners-up."""
        lines = [f"{'pos':>3}  {'token':<16} {'sim':>7} {'dist':>7}  runners-up"]
        for position, row in enumerate(self.candidates):
            shown = repr(row[0].text) if row[0].text is not None else str(row[0].token_id)
            others = ", ".join(repr(c.text) if c.text is not None else str(c.token_id) for c in row[1:])
            lines.append(f"{position:>3}  {shown:<16} {row[0].similarity:7.3f} {row[0].distance:7.3f}  {others}")
        lines.append(
            f"mean distance {self.mean_distance:.3f}, max {self.max_distance:.3f}, special tokens "
            f"{self.special_share:.0%}"
            + (f", non-word tokens {self.non_word_share:.0%}" if self.non_word_share is not None else "")
        )
        return "\n".join(lines)


def project_prompt(
    peft_model: Any,
    tokenizer: Any | None = None,
    top_k: int = 1,
    metric: str | None = None,
    adapter_name: str | None = None,
    constrained: bool = True,
) -> ProjectedPrompt:
    """Read a SOFTHARD adapter's prompt as its nearest tokens.

    For a hard prompt `token_ids` are exactly the tokens the model is fed; for a soft prompt they are each
    vector's nearest token under `metric` (default: the adapter's own), within the adapter's allowed
    vocabulary (`constrained=True`) or the whole vocabulary (`constrained=False`, special tokens included).
    The vocabulary is scored in bounded-memory chunks, whatever its size.
    """
    _, config, encoder = softhard_adapter(peft_model, adapter_name)
    metric = metric or config.metric
    vectors = encoder.embedding.weight.detach()
    embed = encoder.word_embeddings
    candidate_ids = encoder.allowed_token_ids().to(vectors.device) if constrained else None
    with torch.no_grad():
        ids, scores = nearest_tokens(
            vectors, embed, candidate_ids, metric=metric, top_k=top_k, chunk_size=config.projection_chunk_size
        )
        if config.is_hard:  # the tokens in use, even where the reading's metric or vocabulary would differ
            in_use = encoder.current_token_ids().to(vectors.device)
            token_ids = in_use.tolist()
            similarities = similarity(vectors, embed(in_use), metric).diagonal().tolist()
        else:
            token_ids, similarities = ids[:, 0].tolist(), scores[:, 0].tolist()
        used = torch.tensor(token_ids, device=vectors.device)
        distances = distance(vectors, embed(used), metric).tolist()
        candidate_distances = distance(vectors.repeat_interleave(top_k, 0), embed(ids.flatten()), metric)

    tokenizer = tokenizer if tokenizer is not None else encoder.tokenizer()
    decode = (lambda i: tokenizer.decode([i])) if tokenizer is not None else (lambda i: None)
    rows = zip(ids.tolist(), scores.tolist(), candidate_distances.view(-1, top_k).tolist(), strict=True)
    candidates = [[TokenCandidate(i, s, d, decode(i)) for i, s, d in zip(*row, strict=True)] for row in rows]
    special = set(encoder.model_special_ids) | set(getattr(tokenizer, "all_special_ids", []) or [])
    texts = [decode(i) for i in token_ids]
    return ProjectedPrompt(
        token_ids=token_ids,
        similarities=similarities,
        distances=distances,
        candidates=candidates,
        metric=metric,
        mode=config.mode,
        constrained=constrained,
        mean_distance=sum(distances) / len(distances),
        max_distance=max(distances),
        special_share=sum(i in special for i in token_ids) / len(token_ids),
        non_word_share=None
        if tokenizer is None
        else sum(i not in special and not _is_word(t) for i, t in zip(token_ids, texts, strict=True)) / len(texts),
        text=tokenizer.decode(token_ids) if tokenizer is not None else None,
        tokens=tokenizer.convert_ids_to_tokens(token_ids) if tokenizer is not None else None,
    )


def to_hard_adapter(peft_model: Any, adapter_name: str | None = None, new_adapter_name: str = "projected") -> str:
    """Add a hard-mode SOFTHARD adapter whose continuous copy is the soft prompt, so its tokens are the soft
    prompt's projection (same metric and vocabulary). Returns the new adapter's name; export it as a plain
    PROMPT_TUNING adapter with `export_prompt_tuning(peft_model, path, new_adapter_name)`.
    """
    _, config, encoder = softhard_adapter(peft_model, adapter_name)
    hard_config = dataclasses.replace(config, mode="hard", inference_mode=False)
    peft_model.add_adapter(new_adapter_name, hard_config)
    hard = peft_model.prompt_encoder[new_adapter_name]
    hard.use_vocabulary_of(encoder)  # read within exactly the same vocabulary
    with torch.no_grad():
        hard.embedding.weight.copy_(encoder.embedding.weight)
    return new_adapter_name


@dataclass
class WaywardnessReport:
    """A soft prompt and its readable projection, scored on the same data."""

    soft_score: float
    projected_score: float
    projected_token_ids: list[int]
    projected_text: str | None
    mean_distance: float
    max_distance: float

    @property
    def kept(self) -> float:
        """projected_score / soft_score: the share of the soft prompt's score the reading keeps."""
        return self.projected_score / self.soft_score if self.soft_score else float("nan")


def waywardness(peft_model: Any, objective: Any, adapter_name: str | None = None, tokenizer: Any = None):
    """Score a soft prompt and its projection with `objective.score` (e.g. held-out accuracy), side by side."""
    adapter_name, _, encoder = softhard_adapter(peft_model, adapter_name)
    base = peft_model.get_base_model()
    reading = project_prompt(peft_model, tokenizer, adapter_name=adapter_name)
    with frozen(base), torch.no_grad():
        soft_score = objective.score(base, encoder.prompt_embeddings().detach())
        projected_score = objective.score(base, torch.tensor(reading.token_ids))
    return WaywardnessReport(
        soft_score, projected_score, reading.token_ids, reading.text, reading.mean_distance, reading.max_distance
    )


def _is_word(text: str) -> bool:
    return any(character.isalnum() for character in text) and "\ufffd" not in text


# ------------------------------------------------------------------------------------------ as text in its place
# The input a text export's round trip is checked with (at {text}; the joins at the prompt's edges are checked)
SAMPLE_INPUT = "This is an example."


@dataclass
class PlacedText:
    """A prompt as text, where its adapter puts it: what a user pastes into any program that runs their model.

    `text` is the prompt's text (prefix and system: put it in front of the input / as the system message); for
    `slot` the adapter's template with the prompt in place, for `suffix` the user message template ending in it
    (`{text}` is where the input goes). `round_trips`: whether the pasted text, with a sample input, tokenizes
    to the ids that were scored; where it does not, the text is not exactly the prompt that was scored.
    """

    placement: str
    text: str
    prompt_text: str
    round_trips: bool
    mode: str


def placed_text(peft_model: Any, tokenizer: Any, adapter_name: str | None = None) -> PlacedText:
    """The adapter's prompt as text in its place (a soft prompt: its nearest-token reading), checked to round-trip.

    Example:
        ```py
        >>> placed_text(model, tokenizer).text  # 'Review: {text}\\n great Sentiment:'  # doctest: +SKIP
        ```
    """
    _, config, _ = softhard_adapter(peft_model, adapter_name)
    reading = project_prompt(peft_model, tokenizer, adapter_name=adapter_name)
    prompt_text = reading.text or ""
    template = placed_template(tokenizer, config.template or TEXT, config.placement)
    ids, offset = encode_example(tokenizer, template, SAMPLE_INPUT)
    scored = ids[:offset] + list(reading.token_ids) + ids[offset:]
    pasted = text_ids(tokenizer, template.replace(PROMPT, prompt_text).replace(TEXT, SAMPLE_INPUT))
    user_template = config.template or TEXT
    text = {"prefix": prompt_text, "system": prompt_text, "suffix": user_template + prompt_text,
            "slot": user_template.replace(PROMPT, prompt_text)}[config.placement]
    return PlacedText(config.placement, text, prompt_text, pasted == scored, config.mode)
