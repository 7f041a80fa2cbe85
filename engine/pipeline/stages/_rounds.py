"""Rounds of the model loop: stages registered once per round index.

A round ``r`` is ``predict{r} -> label{r} -> score{r} -> query{r} -> review{r} -> finetune{r}``; the
model of ``predict{r}`` is ``train.checkpoint`` for ``r = 1`` and ``finetune{r-1}.checkpoint`` after.
Each kind of stage is one class; :func:`per_round` registers a subclass named ``<kind><r>`` for
``r = 1 .. MAX_ROUNDS``, so the manifest has one entry per stage and round and a config enables a
round by giving its sections (``predict2:``, ``label2:`` ...). ``jobs/<kind><r>.py`` runs one of them.
"""

from __future__ import annotations

from engine.pipeline.stage import Stage

#: rounds that have stages (a config uses any prefix of them)
MAX_ROUNDS = 6


def per_round(base: type[Stage], kind: str, order: int) -> dict[int, type[Stage]]:
    """Register ``<kind>1 .. <kind>MAX_ROUNDS`` (subclasses of ``base``); stage order ``order + 100 r``."""
    out: dict[int, type[Stage]] = {}
    for r in range(1, MAX_ROUNDS + 1):
        name = f"{kind}{r}"
        cls = type(f"{base.__name__}{r}", (base,), {"name": name, "order": order + 100 * r, "round": r, "__module__": base.__module__})
        out[r] = cls
    return out
