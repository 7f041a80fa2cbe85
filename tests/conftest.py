"""Shared fixtures: the real data folder, and one local Ray cluster per test session."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: skipped where absent, but a failure when CI=true."""
    if not SHARED_DATA.is_dir():
        msg = f"../shared/data is absent ({SHARED_DATA}): the real EM data sets are not on this machine"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + " — CI=true requires them")
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A real local Ray cluster (2 CPUs) shared by the tests; yields its address."""
    from engine.runtime import connect, shutdown

    info = connect(num_cpus=2, dashboard=False)
    yield info.address
    shutdown()


def unprivileged_prefix() -> list[str]:
    """The command prefix that runs a process without the right to write (or read) through permission
    bits: nothing for a normal user; as root (which has that right), util-linux ``setpriv`` dropping
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH. Skips the test where root has no setpriv."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop the right to write anywhere")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
