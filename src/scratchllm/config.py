"""Dataclass configs: building them from JSON or from `--set key=value`, checked by type.

A config is a dataclass; a field may itself be a dataclass (PaliGemma's `vision` and `text`).
Every value is checked against its field's type before the config is built, and a config is
built once, from all of its values together, so its own checks (`__post_init__`) see the
finished config whatever order the overrides came in.

A field whose metadata says `derived` (the vocabulary size, set from the tokenizer) is filled
in by the model's spec and cannot be set by hand.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from scratchllm.errors import ScratchLLMError

DERIVED = {"derived": True}  # field(metadata=DERIVED): filled in from the tokenizer or data


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _optional_inner(kind: Any) -> Any | None:
    """X for Optional[X] (or X | None), else None."""
    args = typing.get_args(kind)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return inner[0]
    return None


def check_value(value: Any, kind: Any, key: str) -> Any:
    """`value` (from JSON or parsed text) as the field's type, or a one-line error naming the key."""
    inner = _optional_inner(kind)
    if inner is not None:
        return None if value is None else check_value(value, inner, key)
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):
            return value
        if not isinstance(value, dict):
            raise ScratchLLMError(f"{key} must be an object of {kind.__name__}'s fields, got {type(value).__name__}")
        return from_dict(kind, value, where=key)
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise ScratchLLMError(f"{key} must be a list, got {type(value).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(check_value(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ScratchLLMError(f"{key} must have {len(args)} values, got {len(value)}")
        return tuple(check_value(v, a, key) for v, a in zip(value, args))
    if kind is bool:
        if not isinstance(value, bool):
            raise ScratchLLMError(f"{key} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ScratchLLMError(f"{key} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ScratchLLMError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ScratchLLMError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ScratchLLMError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {kind} for {key}")


def from_dict(cls: type, data: Any, where: str | None = None) -> Any:
    """Build a dataclass from JSON data, checking every value's type and refusing unknown keys."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ScratchLLMError(f"config for {where} must be an object, got {type(data).__name__}")
    types = _field_types(cls)
    unknown = set(data) - set(types)
    if unknown:
        raise ScratchLLMError(f"config for {where} has unknown keys {sorted(unknown)}; was it written by a newer scratchllm?")
    kwargs = {k: check_value(v, types[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, OverflowError, ZeroDivisionError, MemoryError) as e:  # a check deeper than __post_init__'s
        raise ScratchLLMError(f"config for {where} is invalid: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# -- --set key=value -------------------------------------------------------------------------------

def _parse_text(text: str, kind: Any, key: str) -> Any:
    """The text of `--set key=text` as a JSON-like value of the field's type."""
    inner = _optional_inner(kind)
    if inner is not None:
        return None if text.lower() in ("none", "null") else _parse_text(text, inner, key)
    if typing.get_origin(kind) is tuple:
        parts = [p.strip() for p in text.strip("()[] ").split(",") if p.strip()]
        args = typing.get_args(kind)
        item_types = [args[0]] * len(parts) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(parts) != len(item_types):
            raise ScratchLLMError(f"--set {key}={text}: expected {len(item_types)} comma-separated values, e.g. {key}=0.9,0.99")
        return [_parse_text(p, t, key) for p, t in zip(parts, item_types)]
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ScratchLLMError(f"--set {key}={text}: expected true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ScratchLLMError(f"--set {key}={text}: expected an integer") from None
    if kind is float:
        try:
            value = float(text)
        except ValueError:
            raise ScratchLLMError(f"--set {key}={text}: expected a number") from None
        if not math.isfinite(value):
            raise ScratchLLMError(f"--set {key}={text}: expected a finite number")
        return value
    return text


def _leaves(cls: type, prefix: str, out: dict[str, tuple[Any, bool]]) -> None:
    """Every settable field under a dataclass: dotted path -> (type, derived)."""
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            _leaves(kind, f"{prefix}{f.name}.", out)
        else:
            out[prefix + f.name] = (kind, bool(f.metadata.get("derived")))


def apply_overrides(configs: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` strings to a group of dataclass configs, e.g. {"model": ..., "train": ...}.

    A key is any unique dotted tail of a field's path: `n_layer`, `text.n_layer`, `model.text.n_layer`.
    Returns new configs, each built once from all its values; the inputs are left unchanged."""
    fields: dict[str, tuple[Any, bool]] = {}
    for group, cfg in configs.items():
        _leaves(type(cfg), f"{group}.", fields)
    values: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ScratchLLMError(f"--set {item}: expected key=value, e.g. --set n_layer=6")
        key, text = (s.strip() for s in item.split("=", 1))
        matches = [p for p in fields if p == key or p.endswith("." + key)]
        settable = [p for p in matches if not fields[p][1]]
        if matches and not settable:
            raise ScratchLLMError(f"--set {key}: it is set from the tokenizer or data, not by hand"
                                  + ("; change tokenizer.vocab_size instead" if key.endswith("vocab_size") else ""))
        if not settable:
            known = sorted({p.split(".")[-1] for p, (_, derived) in fields.items() if not derived})
            raise ScratchLLMError(f"--set {key}: unknown key; known keys: {', '.join(known)}")
        if len(settable) > 1:
            shortest = [p.split(".", 1)[1] for p in settable]
            raise ScratchLLMError(f"--set {key}: ambiguous, qualify it as one of {', '.join(shortest)}")
        values[settable[0]] = _parse_text(text, fields[settable[0]][0], key)
    out = dict(configs)
    for group, cfg in configs.items():
        changes = {p.split(".", 1)[1]: v for p, v in values.items() if p.split(".", 1)[0] == group}
        if changes:
            data = to_dict(cfg)
            for path, value in changes.items():
                *parents, name = path.split(".")
                node = data
                for p in parents:
                    node = node[p]
                node[name] = value
            out[group] = from_dict(type(cfg), data, where=group)
    return out
