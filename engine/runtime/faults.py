"""Named kill points, for testing that a driver killed at any moment loses nothing.

Multi-pass drivers call :func:`kill_point` at named moments (after a batch of a pass is recorded,
between passes, around scratch clean-up, between pipeline stages). Normally it does nothing. When the
environment variable ``CONNECTILE_TEST_KILL_AT`` names the point, the process sends itself SIGKILL
there, as an out-of-memory kill or a lost node would: no ``finally``, no atexit, no flush.

The value is ``<point>`` or ``<point>@<k>``: kill the ``k``-th time (default the first) this process
reaches the point. Points in use: ``<run name>:batch`` (a pass's scheduler, after it recorded a batch of
blocks; e.g. ``label-local:batch@2``), ``label:after-local``, ``label:after-pairs``,
``label:before-scratch-removal``, ``label:after-scratch-removal`` and the same for ``segment``
(``after-fragments``, ``after-edges``), ``predict:after-windows``, ``predict:before-scratch-removal``,
``predict:after-scratch-removal``, ``downsample:after-level-<k>`` and ``pipeline:after-<stage>``.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

#: The environment variable that arms a kill point (unset: every kill point does nothing).
ENV = "CONNECTILE_TEST_KILL_AT"

_hits: Counter[str] = Counter()


def kill_point(name: str) -> None:
    """SIGKILL this process if ``CONNECTILE_TEST_KILL_AT`` names ``name`` and this is its hit."""
    want = os.environ.get(ENV)
    if not want:
        return
    point, _, nth = want.partition("@")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)
