"""Dataclass configs and `key=value` overrides validated against their fields."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from scratchllm.errors import ScratchLLMError


def _parse_value(text: str, kind: Any, key: str) -> Any:
    """Turn the text of `--set key=text` into the field's type, or explain why not."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if origin is typing.Union or (origin is not None and type(None) in args):
        # Optional[X]: 'none' means None, anything else must parse as X.
        if text.lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse_value(text, inner[0], key)
    if origin is tuple:
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        if len(parts) != len(args):
            raise ScratchLLMError(f"--set {key}={text}: expected {len(args)} comma-separated values, e.g. {key}=0.9,0.99")
        return tuple(_parse_value(p.strip(), a, key) for p, a in zip(parts, args))
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
            return float(text)
        except ValueError:
            raise ScratchLLMError(f"--set {key}={text}: expected a number") from None
    if kind is str:
        return text
    raise ScratchLLMError(f"--set {key}: fields of type {kind} cannot be set from the command line")


def apply_overrides(configs: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` strings to a group of dataclass configs, e.g. {"model": ..., "train": ...}.

    A key is either qualified (`model.n_layer=6`) or bare (`n_layer=6`); a bare key must name a
    field of exactly one config. Returns new configs; the inputs are left unchanged.
    """
    out = dict(configs)
    for item in overrides:
        if "=" not in item:
            raise ScratchLLMError(f"--set {item}: expected key=value, e.g. --set n_layer=6")
        key, text = item.split("=", 1)
        key = key.strip()
        if "." in key:
            group, name = key.split(".", 1)
            if group not in out:
                raise ScratchLLMError(f"--set {key}: unknown group '{group}' (groups: {', '.join(out)})")
            owners = [group] if name in _field_types(out[group]) else []
        else:
            name = key
            owners = [g for g, cfg in out.items() if name in _field_types(cfg)]
        if not owners:
            known = sorted(f for cfg in out.values() for f in _field_types(cfg))
            raise ScratchLLMError(f"--set {key}: unknown key; known keys: {', '.join(known)}")
        if len(owners) > 1:
            raise ScratchLLMError(f"--set {key}: ambiguous, qualify it as one of {', '.join(o + '.' + name for o in owners)}")
        group = owners[0]
        value = _parse_value(text.strip(), _field_types(out[group])[name], key)
        out[group] = dataclasses.replace(out[group], **{name: value})
    return out


def _field_types(cfg: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(cfg))
    return {f.name: hints[f.name] for f in dataclasses.fields(cfg) if f.init}


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Build a dataclass from JSON data, converting lists back to tuples and refusing unknown keys."""
    types = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = set(data) - names
    if unknown:
        raise ScratchLLMError(f"config for {cls.__name__} has unknown keys {sorted(unknown)}; was it written by a newer scratchllm?")
    kwargs = {}
    for k, v in data.items():
        if isinstance(v, list) and typing.get_origin(types[k]) is tuple:
            v = tuple(v)
        elif isinstance(v, dict) and dataclasses.is_dataclass(types[k]):
            v = from_dict(types[k], v)  # nested configs (PaliGemma's vision and text)
        kwargs[k] = v
    return cls(**kwargs)


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"
