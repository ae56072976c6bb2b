"""Command-line options built from the config dataclasses (`TrainConfig`, `DiscoveryConfig`): each option's type,
default and help come from its field (`metadata["help"]`), so the Python API and the command line never hold
two copies of a default. transformers' `HfArgumentParser` builds options the same way; it cannot leave fields
out, rename them or put them in a subcommand beside the task and model options, which `softhard` needs.

Example:
    ```py
    >>> parser = argparse.ArgumentParser()
    >>> add_config_options(parser, DiscoveryConfig, skip=("show_progress",))  # doctest: +SKIP
    >>> config = config_from_args(DiscoveryConfig, parser.parse_args([]), show_progress=False)  # doctest: +SKIP
    ```
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any


def add_config_options(parser: Any, config_class: type, *, skip: tuple[str, ...] = (),
                       rename: dict[str, str] | None = None, choices: dict[str, Any] | None = None,
                       defaults: dict[str, Any] | None = None, title: str | None = None) -> None:
    """One option per field of `config_class` not in `skip`: `--field-name` (or `--{rename[field]}`), the field's
    type, its default (or `defaults[field]`, e.g. a preset's) and its help; `dest` is the field's name."""
    rename, choices, defaults = rename or {}, choices or {}, defaults or {}
    group = parser.add_argument_group(title) if title else parser
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        if field.name in skip or not field.init:
            continue
        default = defaults.get(field.name, _default(field))
        kind, optional = _base_type(hints[field.name])
        options: dict[str, Any] = {"dest": field.name, "default": default,
                                   "help": f"{field.metadata.get('help', '')} (default: %(default)s)"}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is list:
            options.update(nargs="+", type=typing.get_args(kind)[0], metavar=field.name.upper().rstrip("S"))
        else:
            options["type"] = _or_none(kind) if optional else kind
        if field.name in choices:
            options["choices"] = list(choices[field.name])
        group.add_argument(f"--{rename.get(field.name, field.name.replace('_', '-'))}", **options)


def config_from_args(config_class: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """`config_class` from the parsed options of its fields (those `add_config_options` added), with `fixed`
    fields set by the command itself."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_class) if hasattr(args, f.name)}
    return config_class(**{**values, **fixed})


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise ValueError(f"The config field {field.name!r} has no default: a command must set it.")


def _or_none(kind: type):
    """A parser of `kind` that also takes "none" (a field that may be None: `--grad-clip none` turns it off)."""

    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its error messages
    return parse


def _base_type(hint: Any) -> tuple[Any, bool]:
    """(the type an option parses, whether None is allowed) of a field's annotation."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return members[0], len(members) < len(typing.get_args(hint))
    return hint, False
