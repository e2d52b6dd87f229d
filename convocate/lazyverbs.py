"""A command line that builds only the verb it runs and imports that verb's work when it runs (issue 17).

:class:`OneVerb` wraps argparse's subparsers action so that a command line adds the one verb it
names; :class:`Lazy` names a verb's adapter by module and attribute instead of importing it. Neither
imports argparse: ``convocate help`` loads this module and stays without it.
"""

from __future__ import annotations

from typing import Any


class Lazy:
    """A verb's adapter named by module and attribute, imported when the verb runs.

    ``Lazy("_cmd_ls")(args, cluster)`` imports :mod:`convocate.commands` and calls its ``_cmd_ls``;
    with ``factory_args``, the attribute is a factory called with them first (``_simple(op, verb)``).

    Args:
        name: The attribute of ``module``.
        factory_args: Arguments of the factory, if ``name`` is one.
        module: Where ``name`` lives [convocate.commands].
    """

    def __init__(self, name: str, *factory_args: Any, module: str = "convocate.commands") -> None:
        self.name, self.factory_args, self.module = name, factory_args, module

    def resolve(self) -> Any:
        """The callable itself (the import happens here)."""
        import importlib

        target = getattr(importlib.import_module(self.module), self.name)
        return target(*self.factory_args) if self.factory_args else target

    def __call__(self, *args: Any) -> Any:
        return self.resolve()(*args)

    def __repr__(self) -> str:
        return f"Lazy({self.module}.{self.name})"


class Unused:
    """Stands in for the parser of a verb that this command line does not name: takes every call, keeps nothing."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


class OneVerb:
    """The subparsers action, adding only the verb the command line names (issue 17: start-up).

    Building all ~35 verbs' parsers costs ~10 ms and the imports their options need; a command runs
    one. With ``only`` None every verb is added (the man pages, completion and an unknown verb's error,
    which lists them all).
    """

    def __init__(self, action: Any, only: str | None) -> None:
        self.action = action
        self.only = only

    def wants(self, *verbs: str) -> bool:
        """Whether any of ``verbs`` is to be added."""
        return self.only is None or self.only in verbs

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        """``add_parser`` of argparse's subparsers action for a wanted verb; else an :class:`Unused`."""
        return self.action.add_parser(name, **kwargs) if self.wants(name) else Unused()
