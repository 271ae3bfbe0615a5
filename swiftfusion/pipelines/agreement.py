"""Every rank must make the same pipeline call: checked once per call, before its first collective.

With the Python API every rank calls the pipeline itself. Ranks that pass different prompts, seeds,
sizes or batch sizes would otherwise make different images without a word (data parallel gathers
each rank's share of its own call) or die inside a collective whose sizes do not match. So each
rank reduces its call to a small fingerprint (per argument: a digest of the value and a short text
of it), the fingerprints of all ranks are gathered (``comm.all_gather_object``: two tiny
collectives per call), and, since every rank then sees the same fingerprints, every rank raises
the same ``ValueError`` naming each argument that differs: none is left waiting in a collective.

What a fingerprint compares, argument by argument (bound to the ``__call__`` signature, defaults
applied, so passing a default explicitly on one rank only is still the same call):

- ``None``, bools, strings, bytes, numbers (``5 == 5.0``), and lists, tuples and dicts of values,
  by value;
- tensors and numpy arrays by shape, dtype and content (one host copy); PIL images by mode, size
  and pixels; ``torch.Generator`` by its state (shown with its initial seed);
- functions, methods and classes by qualified name; any other object by its type only.

``PER_RANK_ARGUMENTS`` may differ: they change what one rank prints, not what any rank computes.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import numbers
import sys
from collections.abc import Mapping, Sequence

import torch

from .. import comm
from ..runtime import world_size

PER_RANK_ARGUMENTS = frozenset({"show_progress"})  # the CLI shows progress on rank 0 only
SENT_CHARS = 200  # of each value's text, sent to the other ranks
SHOWN_CHARS = 60  # of each value's text, in the message: around the first difference
ORIGINAL_CLASS = "_swiftfusion_unchecked_class"  # on a checking class: the class it wraps

# Per argument name: (digest of the value, its text). Insertion order: the signature's.
Fingerprint = dict[str, tuple[str, str]]
NOT_PASSED = ("", "not passed")


def check_same_call(arguments: Mapping[str, object]) -> None:
    """Raises the same ``ValueError`` on every rank unless all ranks pass equal ``arguments`` (the
    call's arguments by name; a method's ``locals()`` at its top will do: ``self`` is left out).
    Collective over the whole world: every rank must call it; a no-op in a world of one."""
    if world_size() == 1:
        return
    message = disagreement(comm.all_gather_object(fingerprint(arguments)))
    if message is not None:
        raise ValueError(message)


def fingerprint(arguments: Mapping[str, object]) -> Fingerprint:
    """This rank's call, small enough to gather: per argument a 16-hex digest and a short text."""
    result = {}
    for name, value in arguments.items():
        if name == "self" or name in PER_RANK_ARGUMENTS:
            continue
        digest = hashlib.sha256()
        try:
            _feed(digest, value)
            text = _text(value)
        except Exception as error:  # noqa: BLE001 - this rank must still join the gather, or the others wait
            digest.update(f"unreadable:{type(error).__name__}".encode())
            text = f"<unreadable {_qualified(type(value))}>"
        result[name] = (digest.hexdigest()[:16], text if len(text) <= SENT_CHARS else text[: SENT_CHARS - 3] + "...")
    return result


def disagreement(fingerprints: Sequence[Fingerprint]) -> str | None:
    """The message naming every argument some rank passes differently from rank 0 (with the first
    such rank), or None when all agree. The same on every rank: it depends only on what was gathered."""
    first = fingerprints[0]
    names = list(dict.fromkeys(name for fp in fingerprints for name in fp))  # rank 0's order first
    differences = []
    for name in names:
        mine = first.get(name, NOT_PASSED)
        rank = next((r for r, fp in enumerate(fingerprints) if fp.get(name, NOT_PASSED)[0] != mine[0]), None)
        if rank is not None:
            theirs = fingerprints[rank].get(name, NOT_PASSED)
            a, b = _excerpts(mine[1], theirs[1])
            if a == b:  # the difference lies beyond the text: show the digests
                a, b = f"{a} (fingerprint {mine[0][:8]})", f"{b} (fingerprint {theirs[0][:8]})"
            differences.append(f"{name} is {a} on rank 0 but {b} on rank {rank}")
    if not differences:
        return None
    return (f"ranks disagree on the pipeline call: {'; '.join(differences)}; every rank must make the same call "
            "(same prompts, seeds, sizes)")


def _excerpts(a: str, b: str) -> tuple[str, str]:
    """At most ``SHOWN_CHARS`` of each text, from shortly before the first character where they differ."""
    if len(a) <= SHOWN_CHARS and len(b) <= SHOWN_CHARS:
        return a, b
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    start = max(0, at - SHOWN_CHARS // 3)

    def cut(text: str) -> str:
        end = start + SHOWN_CHARS
        return ("..." if start else "") + text[start:end] + ("..." if end < len(text) else "")

    return cut(a), cut(b)


def _feed(digest, value: object) -> None:
    """Adds ``value``'s bytes to ``digest``: values the pipeline treats alike feed the same bytes."""
    if value is None or isinstance(value, (bool, str, bytes)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, numbers.Number):
        digest.update(f"number:{_number(value)};".encode())
    elif isinstance(value, torch.Generator):
        digest.update(f"generator:{value.device.type};".encode())
        digest.update(value.get_state().numpy())
    elif isinstance(value, torch.Tensor):
        host = value.detach().resolve_conj().resolve_neg().cpu().contiguous()
        digest.update(f"tensor:{list(host.shape)}:{host.dtype};".encode())
        digest.update(host.reshape(-1).view(torch.uint8).numpy())
    elif _is_array(value):
        digest.update(f"array:{list(value.shape)}:{value.dtype.str};".encode())
        if value.dtype.hasobject:  # the bytes of an object array are pointers
            _feed(digest, value.tolist())
        else:
            digest.update(value.tobytes())
    elif _is_image(value):
        digest.update(f"image:{value.mode}:{value.size};".encode())
        digest.update(value.tobytes())
    elif isinstance(value, (list, tuple)):
        digest.update(f"sequence:{len(value)}[".encode())
        for item in value:
            _feed(digest, item)
        digest.update(b"]")
    elif isinstance(value, dict):
        digest.update(f"dict:{len(value)}{{".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
        digest.update(b"}")
    elif isinstance(value, functools.partial):
        digest.update(b"partial:")
        _feed(digest, [value.func, value.args, value.keywords])
    elif inspect.isroutine(value) or isinstance(value, type):
        digest.update(f"callable:{_qualified(value)};".encode())
    else:
        digest.update(f"object:{_qualified(type(value))};".encode())


def _text(value: object) -> str:
    """How a value is shown in the message (long values are cut there)."""
    if isinstance(value, torch.Generator):
        device = "" if value.device.type == "cpu" else f"{value.device.type!r}, "
        return f"torch.Generator({device}initial_seed={value.initial_seed()})"
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={list(value.shape)}, dtype={value.dtype})"
    if _is_array(value):
        return f"array(shape={list(value.shape)}, dtype={value.dtype})"
    if _is_image(value):
        return f"PIL.Image(mode={value.mode}, size={value.size})"
    if isinstance(value, list):
        return f"[{', '.join(map(_text, value))}]"
    if isinstance(value, tuple):
        return f"({', '.join(map(_text, value))}{',' if len(value) == 1 else ''})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key!r}: {_text(item)}" for key, item in value.items()) + "}"
    if isinstance(value, functools.partial):
        return f"functools.partial({_qualified(value.func)}, ...)"
    if inspect.isroutine(value) or isinstance(value, type):
        return _qualified(value)
    if value is None or isinstance(value, (bool, str, bytes, numbers.Number)):
        return repr(value)
    return f"<{_qualified(type(value))} object>"


def _number(value: numbers.Number) -> str:
    """Integral values as integers (a size of 32.0 is 32), other real numbers as Python floats."""
    try:
        if int(value) == value:
            return repr(int(value))
    except (TypeError, ValueError, OverflowError):  # complex, nan, inf
        pass
    return repr(float(value)) if isinstance(value, numbers.Real) else repr(value)


def _qualified(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or _qualified(type(obj))
    return f"{module}.{name}" if module and module != "builtins" else name


def _is_array(value: object) -> bool:
    numpy = sys.modules.get("numpy")  # not imported: no arrays can have been passed
    return numpy is not None and isinstance(value, numpy.ndarray)


def _is_image(value: object) -> bool:
    image = sys.modules.get("PIL.Image")
    return image is not None and isinstance(value, image.Image)


def check_calls(pipe: object) -> None:
    """Makes ``pipe(...)`` run ``check_same_call`` on its arguments first (once per call).

    For pipelines of other libraries (diffusers), which ``parallelize`` returns as the same object,
    since users often ignore its return value. Why swap the instance's class for a subclass of its
    own class: Python looks ``__call__`` up on the type, so an instance attribute is never called;
    patching the pipeline class itself would also change the unparallelized pipelines of the
    process; a wrapper object would be lost by a caller who keeps the original reference; and a
    hook on the transformer runs per step, after the text encoders, not once per call. The subclass
    (one per class, holding no state) carries the original's ``__name__``, ``__qualname__`` and
    ``__module__``, so diffusers' ``save_pretrained`` (which writes ``type(pipe).__name__`` as
    ``_class_name``), reprs and checks by class name see the original, and ``isinstance`` holds.
    Idempotent; ``uncheck_calls`` undoes it. Limit: such a pipeline cannot be pickled (pickle
    finds a class by its name, which names the original).
    """
    if ORIGINAL_CLASS not in type(pipe).__dict__:
        pipe.__class__ = _checking_class(type(pipe))


def uncheck_calls(pipe: object) -> None:
    """Gives ``pipe`` back its original class (calls are no longer checked); a no-op if not checked."""
    original = type(pipe).__dict__.get(ORIGINAL_CLASS)
    if original is not None:
        pipe.__class__ = original


@functools.cache  # one checking class per original: two checked pipelines of a class share a type
def _checking_class(cls: type) -> type:
    original_call = cls.__call__
    signature = inspect.signature(original_call)

    @functools.wraps(original_call)  # help(pipe) and inspect.signature(pipe) show the original's
    def __call__(self, *args, **kwargs):
        check_same_call(_call_arguments(signature, self, args, kwargs))
        return original_call(self, *args, **kwargs)

    namespace = {"__call__": __call__, "__module__": cls.__module__, "__qualname__": cls.__qualname__,
                 "__doc__": cls.__doc__, "__slots__": (), ORIGINAL_CLASS: cls}
    return type(cls)(cls.__name__, (cls,), namespace)


def _call_arguments(signature: inspect.Signature, pipe: object, args: tuple, kwargs: dict) -> dict[str, object]:
    """The call's arguments by parameter name, defaults applied; ``**kwargs`` spread out by name. A
    call the pipeline will reject (with its own error, after the check) is compared as far as it
    binds, so that one rank's bad call fails every rank at the check instead of leaving them waiting."""
    parameters = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    known = kwargs if takes_any else {name: value for name, value in kwargs.items() if name in parameters}
    try:
        bound = signature.bind_partial(pipe, *args, **known)
    except TypeError:  # too many positional arguments, or one given twice
        return {"positional arguments": args, **kwargs}
    bound.apply_defaults()
    arguments: dict[str, object] = {}
    for name, value in bound.arguments.items():
        if parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        else:
            arguments[name] = value
    return {**arguments, **{name: value for name, value in kwargs.items() if name not in known}}
