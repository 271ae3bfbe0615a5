"""``--pipeline-arg KEY=VALUE``: command-line text typed by the annotation (or default) of the
pipeline's ``__call__`` parameter it sets: booleans, integers, numbers, strings, JSON lists and
objects, ``none`` where the parameter is optional."""

from __future__ import annotations

import inspect
import json
import types
import typing

from .diffusers_pipelines import OWN_ARGUMENTS, call_signature

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _annotation_kinds(annotation, default) -> list[type]:
    if annotation is inspect.Parameter.empty or isinstance(annotation, str):
        return [type(default)] if default is not None else [str]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [kind for member in typing.get_args(annotation) for kind in _annotation_kinds(member, None)]
    return [typing.get_origin(annotation) or annotation]


def _kinds(parameter: inspect.Parameter) -> list[type]:
    default = None if parameter.default is inspect.Parameter.empty else parameter.default
    return _annotation_kinds(parameter.annotation, default)


def _settable(parameter: inspect.Parameter) -> bool:
    """Whether a value of the parameter's type can be written on a command line."""
    return bool(set(_kinds(parameter)) & {bool, int, float, str, dict, list})


KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "a JSON object",
              list: "a JSON list", type(None): "none"}


def _kinds_text(kinds: list[type]) -> str:
    return " or ".join(KIND_NAMES.get(kind, getattr(kind, "__name__", str(kind))) for kind in kinds)


def _convert(text: str, kinds: list[type]):
    if type(None) in kinds and text.lower() == "none":
        return None
    for kind in (bool, int, float, dict, list, str):  # the strictest reading first
        if kind not in kinds:
            continue
        if kind is bool and text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        if kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                continue
        if kind in (dict, list):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(value, kind):
                return value
        if kind is str:
            return text
    raise ValueError(f"expects {_kinds_text(kinds)}, got {text!r}")


def pipeline_arguments(class_name: str, items: list[str], dedicated: dict[str, str]) -> dict:
    """``--pipeline-arg KEY=VALUE`` items as typed keyword arguments of the pipeline's ``__call__``.
    ``dedicated``: pipeline argument -> the CLI flag that sets it (those keys are refused)."""
    parameters = call_signature(class_name).parameters
    result = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--pipeline-arg takes KEY=VALUE, got {item!r}")
        if key in dedicated:
            raise ValueError(f"--pipeline-arg {key}: use {dedicated[key]}")
        if key in OWN_ARGUMENTS:
            raise ValueError(f"--pipeline-arg {key}: set by swiftfusion for every call, not settable")
        if key not in parameters or key == "self" or parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
            settable = sorted(k for k, p in parameters.items() if k not in (*OWN_ARGUMENTS, *dedicated)
                              and p.kind is p.POSITIONAL_OR_KEYWORD and k != "self" and _settable(p))
            raise ValueError(f"--pipeline-arg {key}: {class_name} takes no argument {key!r}; it takes "
                             f"{', '.join(settable)}")
        parameter = parameters[key]
        if not _settable(parameter):
            raise ValueError(f"--pipeline-arg {key}: a {_kinds_text(_kinds(parameter))} cannot be given on the command "
                             "line")
        kinds = _kinds(parameter)
        try:
            result[key] = _convert(text.strip(), kinds)
        except ValueError as error:
            raise ValueError(f"--pipeline-arg {key} {error}") from None
    return result
