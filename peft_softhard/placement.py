"""Where a prompt goes in text, and inputs tokenized with its slot marked.

An adapter's `placement` (in its `SoftHardConfig`) says where its prompt goes: `prefix`, in front of the input
(peft's layout; inputs need no mark); `slot`, at `{prompt}` in the adapter's `template`; `system`, as the chat
template's system turn (a conversation's own system text follows the prompt; one without a system message gets
a system turn holding only the prompt, instead of the template's default one); `suffix`, at the end of the
conversation's last user message. A text given for a chat placement is the user message (in the adapter's
`template`, if it has one). `placed_template` writes any of these as one text template with `{text}` and
`{prompt}`: what the objectives score (`ClassificationObjective(template=...)`). Other than for `prefix`, the
model finds the slot by a mark in the input ids (`prompt_layout.PROMPT_SLOT_ID`): `tokenize_with_prompt` writes
it, and any collator pads it like any id.

The text before and after a slot is tokenized on its own, so the prompt's tokens sit exactly at the slot; a hard
prompt's pasted text can tokenize differently at the joins (`reading.placed_text` says when).

Example:
    ```py
    >>> config = SoftHardConfig(task_type="CAUSAL_LM", num_virtual_tokens=8, placement="system")  # doctest: +SKIP
    >>> batch = tokenize_with_prompt(tokenizer, config, messages=[[{"role": "user", "content": "Hi"}]],
    ...                              return_tensors="pt")                                    # doctest: +SKIP
    >>> peft_model.generate(**batch, max_new_tokens=20)                                      # doctest: +SKIP
    ```
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import BatchEncoding

from .method.config import PLACEMENTS
from .objectives.templates import CHAT_PLACEMENTS, PROMPT, TEXT, check_template, encode_example, text_ids
from .prompt_layout import PROMPT_SLOT_ID

Messages = list[dict[str, str]]

# Put in a message's text to find where the chat template renders it: private-use characters no template alters.
_MARK = "\ue000softhard-prompt\ue000"


def placed_template(tokenizer: Any, template: str = "{text}", placement: str = "prefix", chat: bool = False) -> str:
    """The text template of an input, with `{text}` and `{prompt}` where the example and the prompt go: `template`
    (an example's input) with the prompt in front (`prefix`) or at its own `{prompt}` (`slot`); with `chat`
    (`system` and `suffix` always), `template` is the user message of the tokenizer's chat template, rendered
    with the generation prompt after it, so the answer follows where the assistant's turn begins.

    Example:
        ```py
        >>> placed_template(tokenizer, "Review: {text}", "system")  # doctest: +SKIP
        '<|im_start|>system\n{prompt}<|im_end|>\n<|im_start|>user\nReview: {text}<|im_end|>\n<|im_start|>assistant\n'
        ```
    """
    check_template(template)
    if (placement == "slot") != (PROMPT in template):
        raise ValueError(f"placement={placement!r} with template {template!r}: a template marks a {PROMPT} slot "
                         "exactly when the placement is 'slot'.")
    if placement not in PLACEMENTS:
        raise ValueError(f"Unknown placement {placement!r}: choose one of {', '.join(PLACEMENTS)}.")
    chat = chat or placement in CHAT_PLACEMENTS
    if not chat:
        return template if placement == "slot" else PROMPT + template
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"placement={placement!r} (or chat) renders the input through the tokenizer's chat template, "
                         "and this tokenizer has none: use placement 'prefix' or 'slot' without chat.")
    user = [{"role": "user", "content": template}]
    if placement in ("prefix", "slot"):
        rendered = _render(tokenizer, user, add_generation_prompt=True)
        return rendered if placement == "slot" else PROMPT + rendered
    return _render(tokenizer, _marked(user, placement), add_generation_prompt=True).replace(_MARK, PROMPT)


def adapter_placement(tokenizer: Any, template: str = TEXT, placement: str | None = None,
                      chat: bool = False) -> dict[str, str]:
    """The `placement` and `template` of a `SoftHardConfig` whose prompt goes at `placement` (None: `slot` where
    `template` marks `{prompt}`, else `prefix`) of `template` (an example's input), rendered through the chat
    template with `chat` (for `system` and `suffix` the template stays the user message: the adapter renders it).
    `placed_template(tokenizer, **fields)` is then the text template its objective scores."""
    placement = placement or ("slot" if PROMPT in template else "prefix")
    if placement in CHAT_PLACEMENTS:
        placed_template(tokenizer, template, placement)  # checks the template and the chat template now
        return {"placement": placement, "template": template}
    if placement == "prefix" and PROMPT in template:
        raise ValueError(f"The template {template!r} marks a {PROMPT} slot but the placement is 'prefix': choose "
                         "placement 'slot' or take {prompt} out of the template.")
    rendered = placed_template(tokenizer, template, placement, chat)
    return {"placement": placement, "template": rendered if placement == "slot" else rendered[len(PROMPT):]}


def prompt_segments(tokenizer: Any, config: Any, *, text: str | None = None, messages: Messages | None = None,
                    add_generation_prompt: bool = True) -> tuple[list[int], list[int]]:
    """(ids before the slot, ids after it) of one input for an adapter of `config`: a `text` (put in the
    config's template; as the user message for chat placements) or a chat (`messages`; not for `slot`). For
    `prefix` the first part is empty. A text outside a chat gets the tokenizer's special tokens (e.g. a BOS)
    around the whole, as `tokenizer(text)` would; a chat, only what its template writes."""
    placement = getattr(config, "placement", "prefix")
    if (text is None) == (messages is None):
        raise ValueError("Give each input as a text or as chat messages (a list of {'role', 'content'} dicts).")
    if text is not None:
        template = placed_template(tokenizer, getattr(config, "template", None) or TEXT, placement)
        ids, offset = encode_example(tokenizer, template, text)
        bos = getattr(tokenizer, "bos_token", None)
        if placement in CHAT_PLACEMENTS or (bos and template.replace(PROMPT, "").startswith(bos)):
            return ids[:offset], ids[offset:]  # a rendered chat: its template wrote the special tokens it needs
        head, tail = _special_tokens_around(tokenizer)
        return head + ids[:offset], ids[offset:] + tail
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("The tokenizer has no chat template: give texts (placement 'prefix' or 'slot') instead of "
                         "messages, or a tokenizer with a chat template.")
    if placement == "prefix":
        return [], text_ids(tokenizer, _render(tokenizer, messages, add_generation_prompt))
    if placement == "slot":
        raise ValueError("placement='slot' fills the adapter's template with a text; give texts=, not messages.")
    rendered = _render(tokenizer, _marked(messages, placement), add_generation_prompt)
    before, after = rendered.split(_MARK)
    return (text_ids(tokenizer, before) if before else []), (text_ids(tokenizer, after) if after else [])


def tokenize_with_prompt(
    tokenizer: Any,
    config: Any,
    texts: Sequence[str] | None = None,
    messages: Sequence[Messages] | None = None,
    *,
    targets: Sequence[str] | None = None,
    add_generation_prompt: bool = True,
    return_tensors: str | None = None,
) -> BatchEncoding:
    """Inputs for an adapter of `config` (a `SoftHardConfig`, or anything with `placement` and `template`): each
    text or conversation tokenized with its prompt's slot marked (`PROMPT_SLOT_ID`; none for `prefix`).

    With `targets` (one text per input, appended after it: an answer, an assistant reply) the rows get `labels`
    that score only the targets (-100 elsewhere): a batch the Trainer trains on as it is. With
    `return_tensors="pt"` rows are padded on the tokenizer's `padding_side`; without, any collator pads them.

    Returns:
        a BatchEncoding with `input_ids`, `attention_mask` (and `labels`), rows of any lengths or [B, L].
    """
    inputs = list(texts) if texts is not None else list(messages or [])
    if (texts is None) == (messages is None) or not inputs:
        raise ValueError("Give texts= (a list of strings) or messages= (a list of conversations), not both.")
    if targets is not None and len(targets) != len(inputs):
        raise ValueError(f"Got {len(targets)} targets for {len(inputs)} inputs; give one target per input.")
    rows, labels = [], []
    for i, item in enumerate(inputs):
        given = {"text": item} if texts is not None else {"messages": item}
        before, after = prompt_segments(tokenizer, config, add_generation_prompt=add_generation_prompt, **given)
        mark = [PROMPT_SLOT_ID] if getattr(config, "placement", "prefix") != "prefix" else []
        row = before + mark + after
        target = text_ids(tokenizer, targets[i]) if targets is not None else []
        rows.append(row + target)
        labels.append([-100] * len(row) + target)
    encoded = {"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows]}
    if targets is not None:
        encoded["labels"] = labels
    if return_tensors is None:
        return BatchEncoding(encoded)
    if return_tensors != "pt":
        raise ValueError(f"return_tensors={return_tensors!r}: only 'pt' (or None, for lists) is supported.")
    return BatchEncoding(_pad(encoded, tokenizer))


def _marked(messages: Messages, placement: str) -> Messages:
    """A copy of `messages` with the slot mark at the start of the system turn or the end of the last user turn."""
    messages = [dict(message) for message in messages]
    if placement == "system":
        if messages and messages[0].get("role") == "system":
            messages[0]["content"] = _MARK + messages[0]["content"]
        else:
            messages.insert(0, {"role": "system", "content": _MARK})
        return messages
    users = [i for i, message in enumerate(messages) if message.get("role") == "user"]
    if not users:
        raise ValueError("placement='suffix' puts the prompt at the end of the last user message; this "
                         "conversation has no user message.")
    messages[users[-1]]["content"] = messages[users[-1]]["content"] + _MARK
    return messages


def _render(tokenizer: Any, messages: Messages, add_generation_prompt: bool) -> str:
    """The chat as the tokenizer's chat template writes it; the slot mark, where there is one, exactly once."""
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    if sum(_MARK in message.get("content", "") for message in messages) != rendered.count(_MARK):
        raise ValueError("The chat template did not render the prompt's slot once where it was put; check that it "
                         "writes system and user messages' content as given.")
    return rendered


def _special_tokens_around(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special ids a tokenizer puts before and after a single input (e.g. [bos], [] or [], [eos])."""
    plain = text_ids(tokenizer, "a")
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []


def _pad(encoded: dict[str, list[list[int]]], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Rows padded to the longest on the tokenizer's side: ids with its pad id, mask with 0, labels with -100."""
    width = max(len(row) for row in encoded["input_ids"])
    left = getattr(tokenizer, "padding_side", "right") == "left"
    fills = {"input_ids": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
             "attention_mask": 0, "labels": -100}
    padded = {}
    for key, rows in encoded.items():
        padded[key] = torch.tensor([([fills[key]] * (width - len(row)) + row) if left
                                    else (row + [fills[key]] * (width - len(row))) for row in rows])
    return padded
