"""``RUN/manifest.json``: what each stage of a run was run with, what it produced, and whether it finished.

One entry per stage::

    "label": {"hash": "3f2a...", "status": "done", "outputs": {"labels": "RUN/label/cc.zarr/labels"},
              "depends": ["synth"], "config": {...}, "started": 1700000000.0, "finished": ..., "seconds": 12.3}

``status`` is ``running`` from the moment a stage starts until it returns (``done``) or raises
(``failed``); a stage killed mid-way stays ``running``, and the next run resumes it. The file is
replaced atomically (write a temporary file, fsync, rename) after every change, so a crash never
leaves half a manifest.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from engine.errors import StorageError

Status = Literal["running", "done", "failed"]
VERSION = 1


class Manifest:
    """The manifest of the run folder ``run_dir`` (created on first save)."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "manifest.json"
        self.stages: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as err:
                raise StorageError(f"the run manifest {self.path} cannot be read ({err})", "delete the run folder to start over") from err
            if not isinstance(data, dict) or data.get("version") != VERSION or not isinstance(data.get("stages"), dict):
                raise StorageError(f"the run manifest {self.path} is not a Connectile manifest (version {VERSION})", "delete the run folder to start over")
            self.stages = data["stages"]

    def entry(self, stage: str) -> dict[str, Any] | None:
        return self.stages.get(stage)

    def is_done(self, stage: str, digest: str) -> bool:
        """True if ``stage`` finished with the config hash ``digest``."""
        e = self.stages.get(stage)
        return e is not None and e.get("status") == "done" and e.get("hash") == digest

    def start(self, stage: str, digest: str, depends: list[str], config: dict[str, Any]) -> None:
        self.stages[stage] = {
            "hash": digest, "status": "running", "outputs": {}, "depends": depends, "config": config,
            "started": time.time(), "finished": None, "seconds": None, "attempts": int((self.stages.get(stage) or {}).get("attempts", 0)) + 1,
        }
        self.save()

    def finish(self, stage: str, outputs: dict[str, str], seconds: float, extra: dict[str, Any] | None = None) -> None:
        e = self.stages[stage]
        e.update(status="done", outputs=dict(outputs), finished=time.time(), seconds=seconds, error=None)
        if extra:
            e["info"] = extra
        self.save()

    def fail(self, stage: str, error: str, seconds: float) -> None:
        e = self.stages[stage]
        e.update(status="failed", finished=time.time(), seconds=seconds, error=error)
        self.save()

    def save(self) -> None:
        """Write atomically: a temporary file in the same folder, fsync, rename over the old one."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=self.run_dir)
        except OSError as err:
            raise StorageError(f"cannot write in the run folder {self.run_dir}: {err.strerror or err}", "choose a writable run_dir") from err
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": VERSION, "stages": self.stages}, f, indent=1, default=str)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def to_dict(self) -> dict[str, Any]:
        return {"version": VERSION, "stages": self.stages}
