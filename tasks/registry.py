"""Small in-process registries keyed by name (pure): a setting names an entry, code looks it up.

A registry is a dict plus a `register` decorator. ragloop registers its own entries where they are
defined (tasks/chunking.py, tasks/question_types.py, tasks/metrics.py, tasks/alerting.py,
tasks/ingestion.py); an extension registers more the same way. There is no plugin discovery: an entry
exists once the module that registers it has been imported.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar, get_args

T = TypeVar("T")

_BY_SETTING: dict[str, "Registry"] = {}


class UnknownName(KeyError):
    """A name no entry is registered under; the message names the setting and the registered names."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class Registry(dict[str, T]):
    """name -> entry for one kind of thing (`kind`, e.g. "chunking strategy"), usually chosen by one
    setting (`setting`, e.g. "chunking.strategy"). `registry[name]` raises UnknownName for a name that
    was never registered; `.get(name)` returns None as a dict does."""

    def __init__(self, kind: str, setting: str | None = None) -> None:
        super().__init__()
        self.kind, self.setting = kind, setting
        if setting:
            _BY_SETTING[setting] = self

    def register(self, name: str, entry: T | None = None, *, replace: bool = False) -> Any:
        """Register `entry` under `name` and return it; without an entry, return a decorator that
        registers what it decorates (and returns it unchanged).

        Raises ValueError when the name is taken, unless `replace` (an extension overriding a built-in).
        """
        def add(value: T) -> T:
            if name in self and not replace:
                raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True to override it)")
            self[name] = value
            return value

        return add if entry is None else add(entry)

    def __missing__(self, name: str) -> T:
        where = f" ({self.setting})" if self.setting else ""
        raise UnknownName(f"unknown {self.kind} {name!r}{where}; registered: {', '.join(sorted(self)) or 'none'}")


def registered_names(setting: str) -> set[str]:
    """The names registered so far for a setting (empty while the module holding its registry is not imported)."""
    registry = _BY_SETTING.get(setting)
    return set(registry) if registry is not None else set()


def name_check(builtin: Any, setting: str, kind: str) -> Callable[[str], str]:
    """A settings validator for a name chosen from a registry: the built-in names (the values of the
    Literal `builtin`) and whatever has been registered for `setting` are accepted. An unknown name
    raises ValueError listing the accepted ones (pydantic reports it under the field's name)."""
    builtins = tuple(get_args(builtin))

    def check(name: str) -> str:
        if name in builtins or name in registered_names(setting):
            return name
        known = sorted(set(builtins) | registered_names(setting))
        raise ValueError(f"unknown {kind} {name!r}; choose one of {', '.join(known)} or register one "
                         "(README: Extending ragloop)")

    return check



class ExtensionError(ValueError):
    """An extension named in the `extensions` setting could not be imported (the message names it)."""


def import_file(path: Path, prefix: str) -> Any:
    """The module of a .py file (an absolute path that exists), imported once per process under a name
    made of `prefix`, its stem and a hash of its path; a file whose import raises is not left half-registered.
    Raises what the module's own code raises."""
    name = f"{prefix}_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
    if name not in sys.modules:
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return sys.modules[name]


def load_extensions(specs: list[str], base: Path) -> list[Any]:
    """Import the user's extension modules, so their @register_* entries exist before settings name them.

    Each spec is a module name importable from sys.path (`my_metrics`, `acme.ragloop_ext`) or a path to a
    .py file (`ext/my_metrics.py`), relative to `base` (the config file's folder) when not absolute.
    Importing the same file again reuses the module (its registrations happen once per process).
    Returns the modules. Raises ExtensionError naming the entry (`extensions[i]`) and the cause.
    """
    modules = []
    for i, spec in enumerate(specs):
        try:
            if spec.endswith(".py") or "/" in spec:
                path = Path(spec).expanduser()
                path = (path if path.is_absolute() else base / path).resolve()
                if not path.is_file():
                    raise ExtensionError(f"extensions[{i}]: no such file {path}")
                modules.append(import_file(path, "ragloop_extension"))
            else:
                modules.append(importlib.import_module(spec))
        except ExtensionError:
            raise
        except Exception as exc:  # an extension's own error, reported as the entry's
            raise ExtensionError(f"extensions[{i}] {spec!r}: {type(exc).__name__}: {exc}") from exc
    return modules
