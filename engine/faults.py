"""Named kill points, for testing that a driver killed at any moment loses nothing.

Multi-pass drivers call :func:`kill_point` at named moments (after a batch of a pass is committed,
between passes, around scratch clean-up, between pipeline stages). Normally it does nothing. When the
environment variable ``CONNECTILE_TEST_KILL_AT`` names the point, the process sends itself SIGKILL
there, as an out-of-memory kill or a lost node would: no ``finally``, no atexit, no flush.

The value is ``<point>`` or ``<point>@<k>``: kill the ``k``-th time (default the first) this process
reaches the point. Points in use:

- ``<run name>:batch``: a pass's scheduler, after it recorded and committed a batch of blocks
  (e.g. ``label-local:batch@2``);
- ``label:after-local``, ``label:after-pairs``, ``label:before-scratch-removal``,
  ``label:after-scratch-removal``;
- ``segment:after-fragments``, ``segment:after-edges``, ``segment:before-scratch-removal``,
  ``segment:after-scratch-removal``;
- ``predict:after-windows``, ``predict:before-scratch-removal``, ``predict:after-scratch-removal``;
- ``downsample:after-level-<level>`` (e.g. ``downsample:after-level-s1``);
- ``pipeline:after-<stage>``;
- ``remove-<kind>:partly`` (e.g. ``remove-scratch:partly@2``): inside a guarded delete
  (:func:`engine.storage.safety.remove`), after each entry of a local folder (its metadata and run ids
  first), after the metadata and run ids of a store: a scratch clean-up or an overwrite cut short.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable

#: The environment variable that arms a kill point (unset: every kill point does nothing).
ENV = "CONNECTILE_TEST_KILL_AT"

_hits: Counter[str] = Counter()


def kill_point(name: str, before: Callable[[], object] | None = None) -> None:
    """SIGKILL this process if ``CONNECTILE_TEST_KILL_AT`` names ``name`` and this is its hit;
    ``before`` runs first (the scheduler commits the batch's done-markers there, so that the killed
    run leaves some blocks recorded as done and the rerun resumes after them)."""
    want = os.environ.get(ENV)
    if not want:
        return
    point, _, nth = want.partition("@")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == (int(nth) if nth else 1):
        if before is not None:
            before()
        os.kill(os.getpid(), signal.SIGKILL)
