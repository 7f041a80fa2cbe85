"""Groups of keyword options declared once as ``TypedDict``s and taken as ``**options: Unpack[...]``
(the runtime options of every driver, a volume's metadata, a blend's settings, ...): mypy checks the
keys where engine code calls, :func:`check_keys` where anything else does (a misspelt option is a
``TypeError``, as for any unknown keyword, not silently ignored).
"""

from __future__ import annotations

from collections.abc import Mapping


def check_keys(given: Mapping[str, object], declared: type, where: str) -> None:
    """Raise ``TypeError`` for a key of ``given`` that the ``TypedDict`` ``declared`` (and its bases)
    does not declare; ``where`` names the function.

    >>> from typing import TypedDict
    >>> class Opts(TypedDict, total=False):
    ...     window: int
    >>> check_keys({"window": 1}, Opts, "run")
    >>> check_keys({"windw": 1}, Opts, "run")
    Traceback (most recent call last):
    ...
    TypeError: run() got an unexpected keyword argument 'windw'
    """
    allowed = frozenset(getattr(declared, "__optional_keys__", ())) | frozenset(getattr(declared, "__required_keys__", ()))
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise TypeError(f"{where}() got an unexpected keyword argument {unknown[0]!r}")
