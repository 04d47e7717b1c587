"""One small registry helper shared by every plug-in family.

Each family (advantage estimators, policy losses, KL estimators, loss aggregations, verifiers,
samplers, rollout engines) owns one :class:`Registry`. Entries are registered with a decorator under the
paper's name and looked up by the name a recipe gives::

    ADVANTAGES = Registry("advantage estimator")

    @ADVANTAGES.register("grpo")
    def grpo_advantages(...): ...

    fn = ADVANTAGES.get(cfg.algorithm.advantage)

An unknown name is an error that lists the known ones, and :meth:`Registry.bind` checks an entry's keyword
hyperparameters against its signature, so a typo in a recipe (a name or an argument) is caught when the
recipe loads, before any model loads.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class PluginArgumentError(ValueError):
    """A plug-in's keyword arguments do not fit its signature (unknown, missing or of the wrong type);
    ``argument`` names the offending one."""

    def __init__(self, message: str, argument: str | None = None) -> None:
        super().__init__(message)
        self.argument = argument


def hyperparameters(
    fn: Callable, inputs: int = 0, reserved: Iterable[str] = ()
) -> dict[str, inspect.Parameter]:
    """The parameters of ``fn`` a recipe may set: all but the first ``inputs`` (the family's call contract),
    ``*args`` / ``**kwargs``, the batch fields ``fn`` declares it reads (``needs``) and ``reserved`` names
    the trainer passes itself (a controller's initial ``coef``)."""
    skip = set(reserved) | set(getattr(fn, "needs", ()))
    params = list(_signature(fn).parameters.values())[inputs:]
    return {
        p.name: p
        for p in params
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) and p.name not in skip
    }


def bind_kwargs(
    fn: Callable, kwargs: Mapping[str, Any], what: str, inputs: int = 0, reserved: Iterable[str] = ()
) -> dict[str, Any]:
    """Check ``kwargs`` against ``fn``'s signature; return them with the defaults of the unset ones filled in.

    Raises :class:`PluginArgumentError` naming ``what`` (e.g. ``policy loss 'dapo'``) for an unknown
    argument (unless ``fn`` takes ``**kwargs``), a missing required one, or a value that does not fit the
    annotation (checked with pydantic, strictly but for ``int`` -> ``float``: ``1`` passes for a ``float`` and
    is passed as ``1.0``; ``"1"`` or ``True`` does not).
    """
    settable = hyperparameters(fn, inputs, reserved)
    open_ended = any(p.kind == p.VAR_KEYWORD for p in _signature(fn).parameters.values())
    for name in kwargs:
        if name not in settable and not open_ended:
            known = ", ".join(sorted(settable)) or "none"
            raise PluginArgumentError(f"unknown argument {name!r} of {what} (known: {known})", name)
    missing = [n for n, p in settable.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise PluginArgumentError(f"{what} needs argument(s) {', '.join(missing)}", missing[0])
    hints = _type_hints(fn)
    bound = {n: p.default for n, p in settable.items() if p.default is not p.empty}
    for name, value in kwargs.items():
        try:
            bound[name] = _checked(value, hints.get(name), f"argument {name!r} of {what}")
        except PluginArgumentError as exc:
            exc.argument = name
            raise
    return bound


def _signature(fn: Callable) -> inspect.Signature:
    """The signature ``fn`` is called with: a ``functools.wraps`` wrapper's own, not the wrapped function's
    (a pass-through ``**kwargs`` wrapper accepts anything; its arguments are then checked when called)."""
    return inspect.signature(fn, follow_wrapped=False)


def _type_hints(fn: Callable) -> dict[str, Any]:
    """``fn``'s resolved annotations, ``Annotated`` constraints kept (``Annotated[float, Field(ge=0)]``); {}
    when they cannot be resolved (a user's plug-in may use anything)."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target, include_extras=True)  # keep Annotated constraints
    except Exception:  # noqa: BLE001 - unresolvable annotations only lose the type check
        return {}


def _checked(value: Any, hint: Any, what: str) -> Any:
    """``value`` checked against ``hint`` with pydantic: strictly (no ``"3"`` for an int, no ``True`` for a
    float, no ``"off"`` for a bool; an int is a float), except that a YAML list may become a tuple."""
    if hint is None or hint is Any:
        return value
    from pydantic import TypeAdapter, ValidationError

    try:
        adapter = TypeAdapter(hint)
    except Exception:  # noqa: BLE001 - a type pydantic cannot check (a tensor, a callable): not checked
        return value
    try:
        return adapter.validate_python(value, strict=True)
    except ValidationError as exc:
        error = exc
    if isinstance(value, (list, dict)):
        try:
            return adapter.validate_python(value)  # containers: list -> tuple, nested numbers
        except ValidationError as exc:
            error = exc
    expected = _type_text(hint)
    reason = error.errors()[0]["msg"] if error.errors() else str(error)
    raise PluginArgumentError(f"{what} expects {expected}, got {value!r} ({reason})") from None


def _type_text(hint: Any) -> str:
    """``float``, ``int | None``, ``list[str]``: a type as a recipe author reads it (constraints left out;
    the validation message says which one failed)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if hint is type(None):
        return "None"
    if isinstance(hint, type) and not args:
        return hint.__name__
    if isinstance(origin, type) and args:  # list[str], dict[str, float]
        return f"{origin.__name__}[{', '.join(_type_text(a) for a in args)}]"
    return str(hint).replace("typing.", "")


class Registry(Generic[T]):
    """A name -> object mapping for one plug-in family.

    ``inputs`` is how many leading positional arguments the family's contract passes (a policy loss: 4,
    an advantage estimator: 1, a verifier: 2); ``reserved`` names arguments the trainer sets itself. The
    rest of an entry's parameters are its hyperparameters, set from the recipe and checked by :meth:`bind`.
    """

    def __init__(self, family: str, inputs: int = 0, reserved: Iterable[str] = ()) -> None:
        self.family = family
        self.inputs = inputs
        self.reserved = tuple(reserved)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``; a second entry with the same name is an error."""

        def decorate(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.family} {name!r} is already registered")
            self._entries[name] = obj
            return obj

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise KeyError(f"unknown {self.family} {name!r}; known: {known}") from None

    def bind(self, name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """``kwargs`` of entry ``name`` checked against its signature, with defaults filled in
        (:func:`bind_kwargs`); raises :class:`PluginArgumentError` (or ``KeyError`` for an unknown name)."""
        return bind_kwargs(self.get(name), kwargs, f"{self.family} {name!r}", self.inputs, self.reserved)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def names(self) -> list[str]:
        return sorted(self._entries)
