"""Done-markers belong to one output: a run id kept in the markers and in the output itself.

When a run starts, the markers' run id must be found in each output the operation writes
(:meth:`~engine.runtime.op.BlockOp.outputs`): in the ``connectile_runs`` attribute of an array or group,
or as an empty key ``.connectile-runs/<id>`` in a folder (scratch space). An output deleted or
recreated since the markers were written no longer holds the id: its markers are forgotten, the
blocks are computed again under a new run id, never reported "already done".

>>> from engine.storage import create_volume
>>> _ = create_volume("memory://doc-own/a", (2, 4, 4), "uint8", (2, 4, 4))
>>> add_run_id("memory://doc-own/a", "r1"); owns("memory://doc-own/a", "r1"), owns("memory://doc-own/a", "r2")
(True, False)
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence

from engine.runtime.markers import DoneStore
from engine.storage.attrs import read_attrs, update_attrs
from engine.storage.urls import parse_url

log = logging.getLogger(__name__)

RUNS_ATTR = "connectile_runs"
FOLDER_KEY = ".connectile-runs"
MAX_IDS = 32  # passes that write one output (predict's windows and borders) each keep their id


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def _folder_key_exists(url: str, run_id: str) -> bool:
    from engine.storage.volume import _key_exists

    return _key_exists(parse_url(url), f"{FOLDER_KEY}/{run_id}")


def owns(url: str | os.PathLike[str], run_id: str) -> bool:
    """Whether the output at ``url`` carries ``run_id`` (it was not deleted or recreated since)."""
    attrs = read_attrs(url)
    if attrs is not None:
        return run_id in (attrs.get(RUNS_ATTR) or [])
    return _folder_key_exists(os.fspath(url), run_id)


def none_owned(urls: Sequence[str], run_id: str | None) -> bool:
    """Whether nothing of the run ``run_id`` is left in ``urls`` to protect: each output deleted (or a
    fresh bucket at the same address), each scratch folder (inside ``.connectile`` or ``.scratch``)
    deleted or recreated since. An output recreated by someone else still counts as there: work is
    never written over without ``--overwrite``. False without an id or without outputs."""
    if not run_id or not urls:
        return False
    from engine.storage.safety import SCRATCH_FOLDERS

    def lost(url: str) -> bool:
        if owns(url, run_id):
            return False
        if any(part in SCRATCH_FOLDERS for part in parse_url(url).path.split("/")):
            return True  # the runtime's own bookkeeping, recreated by an earlier pass of this run
        return read_attrs(url) is None

    try:
        return all(lost(u) for u in urls)
    except Exception as err:  # noqa: BLE001 - an output we cannot read may still hold the run: protect it
        log.warning("cannot check %s: %s", ", ".join(urls), err)
        return False


def add_run_id(url: str | os.PathLike[str], run_id: str) -> None:
    """Record ``run_id`` in the output at ``url`` (attributes of an array or group, else a key)."""
    attrs = read_attrs(url)
    if attrs is not None:
        ids = [i for i in (attrs.get(RUNS_ATTR) or []) if i != run_id]
        update_attrs(url, {RUNS_ATTR: [*ids, run_id][-MAX_IDS:]})
        return
    import tensorstore as ts

    from engine.errors import StorageError
    from engine.storage.volume import _CONTEXT, _ts_message

    loc = parse_url(url)
    try:
        kv = ts.KvStore.open(loc.kvstore(), context=_CONTEXT).result()
        kv.write(f"{FOLDER_KEY}/{run_id}", b"").result()
    except Exception as err:
        raise StorageError(f"cannot write {loc.url()}/{FOLDER_KEY}/{run_id}: {_ts_message(err)}", "check that the output is writable") from err


def outputs_intact(saved: dict[str, object]) -> bool:
    """Whether a saved result's ``outputs`` (URL -> run id) all still carry their ids: a finished
    result whose output was deleted or recreated since is not "already done"."""
    outputs = saved.get("outputs")
    if not isinstance(outputs, dict) or not outputs:
        return False
    try:
        return all(isinstance(i, str) and bool(i) and owns(u, i) for u, i in outputs.items())
    except Exception as err:  # noqa: BLE001 - an unreadable output is not intact
        log.warning("cannot check %s: %s", ", ".join(outputs), err)
        return False


def claim_outputs(markers: DoneStore, outputs: Sequence[str]) -> str:
    """The run id of ``markers`` once every output carries it. Markers whose outputs were deleted
    or recreated (or that never had an id) start over under a new id, written to the markers first
    and then to each output, so a crash in between leaves a mismatch (a recompute), never a false
    "done"."""
    run_id = markers.run_id
    if run_id is not None:
        lost = [u for u in outputs if not owns(u, run_id)]
        if not lost:
            return run_id
        if markers.count_any():
            log.warning("%s was deleted or recreated since its done-markers in %s were written: computing every block again",
                        ", ".join(lost), markers.path.parent)
    run_id = new_run_id()
    markers.start_over(run_id)
    for url in outputs:
        add_run_id(url, run_id)
    return run_id


__all__ = ["FOLDER_KEY", "RUNS_ATTR", "add_run_id", "claim_outputs", "new_run_id", "none_owned", "outputs_intact", "owns"]
