"""Templates: how an example's text, a prompt and the answer are laid out in a causal LM's input, and the whole
prompt a search finds (`WholePrompt`: the template, the tokens at its slot, the label words).

A template is text with `{text}` (the example) and optionally `{prompt}` (where a prompt's tokens go; without
it they go in front). The answer (a label word) follows the template. An example is encoded as its segments,
each tokenized on its own: the text before the slot, the prompt, the rest; so a prompt's tokens sit at the
slot exactly, and the whole text a user pastes (`WholePrompt.filled`) is checked to tokenize back to them.

Example:
    ```py
    >>> template = place_slot("Review: {text}\\nSentiment:", "end")
    >>> template
    'Review: {text}\\nSentiment:{prompt}'
    >>> WholePrompt(template, [" negative", " positive"], []).filled(None)
    'Review: {text}\\nSentiment:'
    ```
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

TEXT = "{text}"
PROMPT = "{prompt}"

# Where a search puts its tokens when the template has no `{prompt}`: in front of everything ("prefix", the
# peft layout), right after the example's text ("after_text", AutoPrompt's `{sentence} [T][T][T] [P]`), at
# the start of the template's last line ("before_answer_cue": `...\n{prompt} Sentiment:`, a space after the
# tokens so that the cue stays a word of its own), or at the very end, right before the answer ("end":
# `...Sentiment:{prompt}`, RLPrompt's `{x} VERY Absolutely [MASK]`).
PLACEMENTS = ("prefix", "after_text", "before_answer_cue", "end", "system", "suffix")
# ...and in a chat: the system turn, or the end of the user message (the template rendered through the
# tokenizer's chat template first: `placement.placed_template`).
CHAT_PLACEMENTS = ("system", "suffix")


def check_template(template: str) -> None:
    """Raise a clear error unless `template` holds `{text}` once and `{prompt}` at most once."""
    if not isinstance(template, str) or template.count(TEXT) != 1:
        raise ValueError(f"The template must contain '{TEXT}' exactly once, got {template!r}.")
    if template.count(PROMPT) > 1:
        raise ValueError(f"The template may mark one prompt slot '{PROMPT}', got {template!r}.")


def place_slot(template: str, placement: str) -> str:
    """`template` with a `{prompt}` slot at `placement` (one of `PLACEMENTS`); a template that marks its own slot
    keeps it."""
    check_template(template)
    if PROMPT in template:
        return template
    if placement not in PLACEMENTS:
        raise ValueError(f"Unknown placement {placement!r}: choose one of {', '.join(PLACEMENTS)}.")
    if placement in CHAT_PLACEMENTS:
        raise ValueError(f"placement={placement!r} puts the prompt in a chat template's {placement} turn: render the "
                         "template with peft_softhard.placed_template(tokenizer, template, placement) first.")
    if placement == "prefix":
        return PROMPT + template
    if placement == "end":
        return template + PROMPT
    after = template.index(TEXT) + len(TEXT)
    if placement == "before_answer_cue" and "\n" in template[after:]:  # the start of the last line after the text
        cue = template.rindex("\n") + 1
        space = " " if template[cue:cue + 1].isalnum() else ""  # whole-word tokens: the cue stays a word of its own
        return template[:cue] + PROMPT + space + template[cue:]
    return template[:after] + PROMPT + template[after:]


def unescape(template: str) -> str:
    """A template typed on a command line: `\\n` and `\\t` become a newline and a tab (a shell passes them as
    two characters), `\\\\` a backslash."""
    replacements = {"\\n": "\n", "\\t": "\t", "\\\\": "\\"}
    out, index = [], 0
    while index < len(template):
        pair = template[index : index + 2]
        if pair in replacements:
            out.append(replacements[pair])
            index += 2
        else:
            out.append(template[index])
            index += 1
    return "".join(out)


def encode_example(tokenizer: Any, template: str, text: str) -> tuple[list[int], int]:
    """(token ids, prompt offset) of one example: the template's segments around `{prompt}`, each tokenized on its
    own, the prompt going after the first `offset` ids (0 without a slot: in front)."""
    if PROMPT not in template:
        return text_ids(tokenizer, template.replace(TEXT, text)), 0
    before, after = (part.replace(TEXT, text) for part in template.split(PROMPT))
    before_ids = text_ids(tokenizer, before) if before else []
    return before_ids + (text_ids(tokenizer, after) if after else []), len(before_ids)


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """The ids of `text` alone, without the special tokens a tokenizer adds around a whole input."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class WholePrompt:
    """What a whole-prompt search finds and a user pastes: a template with the found tokens at its `{prompt}`
    slot (none: in front), and one label word per class (what the model is read for after the template).

    Example:
        ```py
        >>> found = WholePrompt("Review: {text}\\nSentiment:{prompt}", [" bad", " great"], [428])
        >>> found.filled(tokenizer)  # 'Review: {text}\\nSentiment: this'  # doctest: +SKIP
        ```
    """

    template: str
    label_words: list[str]
    token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_template(self.template)
        self.label_words, self.token_ids = list(self.label_words), [int(i) for i in self.token_ids]

    def prompt_text(self, tokenizer: Any) -> str:
        """The found tokens as text ('' for none)."""
        return tokenizer.decode(self.token_ids) if self.token_ids else ""

    def filled(self, tokenizer: Any) -> str:
        """The template with the found tokens in place of `{prompt}` (in front where it has none): the text a
        user pastes around their input."""
        template = self.template if PROMPT in self.template else PROMPT + self.template
        return template.replace(PROMPT, self.prompt_text(tokenizer) if self.token_ids else "")

    def round_trips(self, tokenizer: Any, texts: list[str]) -> bool:
        """Whether the filled template, with each of `texts` in it, tokenizes to what was scored: the segments'
        ids with the found tokens at the slot."""
        template = self.template if PROMPT in self.template else PROMPT + self.template
        for text in texts:
            before, after = (part.replace(TEXT, text) for part in template.split(PROMPT))
            scored = (text_ids(tokenizer, before) if before else []) + self.token_ids + (
                text_ids(tokenizer, after) if after else [])
            if text_ids(tokenizer, self.filled(tokenizer).replace(TEXT, text)) != scored:
                return False
        return True

    def to_json(self, tokenizer: Any = None, **extra: Any) -> str:
        """The prompt file `softhard eval --prompt-file` reads (with the filled text, for reading)."""
        payload = asdict(self)
        if tokenizer is not None:
            payload["filled"] = self.filled(tokenizer)
            payload["prompt_text"] = self.prompt_text(tokenizer)
        return json.dumps({**payload, **extra}, indent=2)

    @classmethod
    def from_json(cls, text: str, source: str = "the prompt file") -> WholePrompt:
        try:
            payload = json.loads(text)
            return cls(payload["template"], payload["label_words"], payload.get("token_ids", []))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{source} is not a prompt file (JSON with 'template', 'label_words' and 'token_ids', as "
                             f"`softhard discover` writes to prompt.json): {error}") from error
