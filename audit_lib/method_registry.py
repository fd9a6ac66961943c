"""The method contract and the one registry of audit methods.

Each method module (``audit_lib/methods/<paper>.py``) declares a :class:`MethodSpec` (its
name, version, area, hypothesis, the access it needs and its entry point) and registers it
with :func:`register`. Pipelines, the CLI, reports and the web app look a method up here
(:func:`get`) instead of branching on its name, so a new method is one module and one spec
(see ``docs/architecture.md``, "add an audit method").

Hooks that belong to another layer (a pipeline task, a report figure or table) are given
as a callable or as the dotted path ``"package.module:function"`` of one, resolved only
when called (:func:`hook`): a method module imports no report, store or workflow code.

One name per method everywhere (module constant ``METHOD``, finding, CLI, evaluation part,
web); older names that stored findings or DAG tasks used still resolve through
``aliases``.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Area = Literal["privacy", "ownership"]
ACCESS = frozenset({"image", "text", "white-box"})
Figure = tuple[str, "bytes | None", bool]  # (caption, PNG bytes or None, half width)

BUILTIN_MODULES = (
    "audit_lib.methods.identity_inference",
    "audit_lib.methods.membership_inference",
    "audit_lib.methods.watermark",
    "audit_lib.methods.fingerprint",
    "audit_lib.methods.theft",
)
"""The paper modules whose import registers the built-in methods (lazily, on first lookup)."""


@dataclass(frozen=True)
class SubjectInputs:
    """What a privacy pair task hands a method: one subject's registered data on one model.

    ``images`` are the subject's images of the method's ``subject_images`` kind
    (``reference`` photos or ``claimed`` images); ``reference_nonmembers`` the model's
    registered non-members (empty unless the spec asks for them)."""

    images: list[bytes]
    name: str
    aliases: list[str]
    sex: str | None
    pseudonym: str
    capabilities: list[str]
    reference_nonmembers: list[bytes]
    params: Mapping[str, Any]


@dataclass(frozen=True)
class OwnershipPair:
    """What an ownership pair task hands a method's check: the owned and suspect model ids,
    the level (None: the one committed at enrolment) and the store."""

    owned_id: int
    suspect_id: int
    alpha: float | None
    db_url: str | None


@dataclass(frozen=True)
class MethodSpec:
    """One audit method's contract.

    ``run`` is the method's entry point (a pure function over a handle, returning a
    :class:`audit_lib.findings.FindingResult`). The pipeline hooks say how a DAG task calls
    it: for ``privacy``, ``check(inputs) -> prepared`` runs before the model is opened
    (refusing bad input at no query cost) and ``task(handle, inputs, prepared)`` returns the
    finding; for ``ownership``, ``task(handle, OwnershipPair)`` returns (finding, commitment
    sha256). The report hooks draw its figures (``figures(details, record)``) and print its
    values (``tables(details)``); the wording fields are what a report and the web app say.
    """

    name: str
    version: str
    area: Area
    hypothesis: str
    access: frozenset[str]
    run: Callable[..., Any]
    title: str
    question: str
    how: str
    reference: str
    assumptions: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    web_label: str = ""  # the web app's one-line name; default: title
    null_in_words: str = ""  # "if ..." (the web app's p-value sentence); default: a neutral one
    short: str = ""  # the web app's short tag; default: name
    tests_the_case: bool = True  # False: a measurement about the owned model (not in the verdict)
    descriptive: bool = False  # True: an estimate without a decision (its own summary sentence)
    departs: bool = True  # True: calibrated p-value instead of the paper's fixed threshold
    subject_images: Literal["reference", "claimed"] | None = None  # privacy: which images it tests
    needs_reference_nonmembers: bool = False
    holm_per_image: bool = False  # privacy: per-image p-values under Holm (annotated with the reach)
    check: Callable[..., Any] | str | None = None
    task: Callable[..., Any] | str | None = None
    figures: Callable[..., list[Figure]] | str | None = None
    tables: Callable[..., dict[str, Any]] | str | None = None
    summary: Callable[[Mapping[str, Any]], str] | str | None = None
    order: int = 100  # listing order in reports and the web app (lower first)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not self.name.replace("_", "").isalnum() or self.name != self.name.lower():
            raise ValueError(f"method name {self.name!r}: use lower-case letters, digits and '_'")
        if self.area not in ("privacy", "ownership"):
            raise ValueError(f"method {self.name}: area {self.area!r} is not 'privacy' or 'ownership'")
        unknown = set(self.access) - ACCESS
        if not self.access or unknown:
            raise ValueError(f"method {self.name}: access {sorted(self.access)}: expected some of {sorted(ACCESS)}")
        if self.area == "privacy" and self.task is not None and self.subject_images is None:
            raise ValueError(f"method {self.name}: a privacy task needs subject_images ('reference' or 'claimed')")


_LOCK = threading.RLock()
_SPECS: dict[str, MethodSpec] = {}
_ALIASES: dict[str, str] = {}
_LOADED = False


class UnknownMethod(KeyError):
    """No registered method has this name or alias."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown method"


def register(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add ``spec`` to the registry and return it. A name or alias already taken by another
    method is refused (``replace=True`` replaces a spec of the same name)."""
    with _LOCK:
        taken = {n: _ALIASES[n] for n in (spec.name, *spec.aliases) if n in _ALIASES}
        clash = {n: owner for n, owner in taken.items() if owner != spec.name}
        if clash or (spec.name in _SPECS and not replace and _SPECS[spec.name] is not spec):
            raise ValueError(f"method {spec.name}: name or alias already registered: {clash or spec.name}")
        old = _SPECS.get(spec.name)
        for alias in (old.aliases if old else ()):
            _ALIASES.pop(alias, None)
        _SPECS[spec.name] = spec
        for n in (spec.name, *spec.aliases):
            _ALIASES[n] = spec.name
    return spec


def unregister(name: str) -> None:
    """Remove a method (tests that register a toy method clean up with this)."""
    with _LOCK:
        spec = _SPECS.pop(canonical(name), None)
        for n in (spec.name, *spec.aliases) if spec else ():
            _ALIASES.pop(n, None)


def _load_builtins() -> None:
    global _LOADED
    if _LOADED:
        return
    with _LOCK:
        if not _LOADED:
            for module in BUILTIN_MODULES:
                importlib.import_module(module)
            _LOADED = True


def canonical(name: str) -> str:
    """The registered name for ``name`` or one of its aliases; ``name`` itself if unknown."""
    _load_builtins()
    return _ALIASES.get(name, name)


def find(name: str) -> MethodSpec | None:
    """The spec of ``name`` (or an alias), or None."""
    _load_builtins()
    return _SPECS.get(_ALIASES.get(name, name))


def get(name: str, area: Area | None = None) -> MethodSpec:
    """The spec of ``name`` (or an alias); ``UnknownMethod`` names the registered ones."""
    spec = find(name)
    if spec is None or (area is not None and spec.area != area):
        known = ", ".join(s.name for s in specs(area))
        raise UnknownMethod(f"{'an ' + area if area else 'a'} method named {name!r} is not registered; "
                            f"known: {known}")
    return spec


def specs(area: Area | None = None, *, with_task: bool = False) -> list[MethodSpec]:
    """Registered methods in listing order (``order``, then name), optionally one area's
    or only those a pipeline task can run."""
    _load_builtins()
    out = [s for s in _SPECS.values() if (area is None or s.area == area) and (not with_task or s.task)]
    return sorted(out, key=lambda s: (s.order, s.name))


def names(area: Area | None = None, *, with_task: bool = False) -> tuple[str, ...]:
    """The registered names (see :func:`specs`)."""
    return tuple(s.name for s in specs(area, with_task=with_task))


def resolve(ref: Callable[..., Any] | str | None) -> Callable[..., Any] | None:
    """A hook as a callable: itself, or the function a ``"module:attr"`` path names."""
    if ref is None or callable(ref):
        return ref
    module, _, attr = str(ref).partition(":")
    if not attr:
        raise ValueError(f"hook {ref!r}: expected 'package.module:function'")
    return getattr(importlib.import_module(module), attr)


def hook(spec: MethodSpec, which: str) -> Callable[..., Any] | None:
    """The spec's ``which`` hook (``check``, ``task``, ``figures``, ``tables``, ``summary``)
    as a callable, or None when the method has none."""
    if which not in ("check", "task", "figures", "tables", "summary"):
        raise ValueError(f"hook {which!r} is not part of the method contract")
    return resolve(getattr(spec, which))


def all_names_and_aliases() -> Iterable[str]:
    """Every name a stored finding or a caller may use for a registered method."""
    _load_builtins()
    return tuple(_ALIASES)
