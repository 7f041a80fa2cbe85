"""What every benchmark script shares: the machine's description, child processes, alternating sides,
medians, JSON lines.

The scripts in ``benchmarks/`` import this module (``from engine.bench.harness import ...``) instead of
each keeping its own copy:

- :func:`machine_info`: CPU model, cores (and those usable), memory, GPUs, load average, versions;
- :func:`emit`: one JSON object per line on stdout (chatter goes to stderr);
- :func:`run_child` / :func:`child_main`: one side of a comparison in a fresh interpreter (the script
  itself with ``--child NAME --params JSON``), its result read back from a marked stdout line;
- :func:`side_orders`: the order of the sides in each repeat, alternating (``a, b`` then ``b, a``),
  so that a slow moment of a shared machine does not always hit the same side (:func:`reversed_orders`
  for three sides or more: every pair swaps);
- :func:`median` and :func:`summary`: the median of at least three runs, with the runs themselves.

>>> side_orders(["connectile", "peer"], 3)
[['connectile', 'peer'], ['peer', 'connectile'], ['connectile', 'peer']]
>>> median([3.0, 1.0, 2.0]), summary([3.0, 1.0, 2.0])["median_s"]
(2.0, 2.0)
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Marks the line a child process prints its result on.
RESULT_PREFIX = "@@bench-result "
MIB = 1024 * 1024
#: The fewest runs per side a reported median rests on (issue 17 point 9); smoke runs may use fewer.
MIN_RUNS = 3
VERSIONS = ("connectile", "ray", "tensorstore", "numpy", "scipy", "torch", "faiss-cpu", "connected-components-3d", "fastremap")


def version(dist: str) -> str | None:
    """The installed version of ``dist``, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (else what ``platform`` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def gpus() -> list[str]:
    """``name, memory`` of each GPU nvidia-smi lists (empty where there is none)."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [g.strip() for g in res.stdout.splitlines() if g.strip()]


def machine_info(versions: Sequence[str] = VERSIONS) -> dict[str, Any]:
    """This machine: CPU model, cores, memory, GPUs, the load at the time of the call, versions."""
    import psutil

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus(),
        "python": platform.python_version(),
        "os": platform.platform(),
        "load_avg_1m": round(os.getloadavg()[0], 2),  # others' work on the machine skews timings
        "versions": {d: version(d) for d in versions},
    }


def machine_short(m: dict[str, Any]) -> str:
    """One line: CPU, cores, memory and the load when ``m`` was taken."""
    return f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, load {m.get('load_avg_1m', '?')}"


def emit(line: dict[str, Any]) -> None:
    """One JSON object on one line of stdout."""
    print(json.dumps(line), flush=True)


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def summary(values: Sequence[float], prefix: str = "") -> dict[str, Any]:
    """``{prefix}median_s``, ``{prefix}runs_s`` (in the order run) and ``{prefix}n_runs`` of ``values``."""
    return {f"{prefix}median_s": round(median(values), 4), f"{prefix}runs_s": [round(v, 4) for v in values], f"{prefix}n_runs": len(values)}


def side_orders(sides: Sequence[str], repeats: int) -> list[list[str]]:
    """The order of ``sides`` in each of ``repeats`` rounds: rotated by one each round (two sides:
    ``a, b`` then ``b, a``), so each side runs first equally often."""
    sides = list(sides)
    n = max(1, len(sides))
    return [sides[r % n :] + sides[: r % n] for r in range(repeats)]


def reversed_orders(sides: Sequence[str], repeats: int) -> list[list[str]]:
    """The order of ``sides`` in each of ``repeats`` rounds: as given, then reversed, and so on, so that
    every *pair* of sides swaps its order each round (rotating three or more sides does not: ``a``
    stays before ``b`` until the rotation wraps), and a machine whose load drifts favours no side.

    >>> reversed_orders(["a", "b", "c"], 3)
    [['a', 'b', 'c'], ['c', 'b', 'a'], ['a', 'b', 'c']]
    """
    sides = list(sides)
    return [sides if r % 2 == 0 else sides[::-1] for r in range(repeats)]


def run_child(
    script: str | os.PathLike[str], name: str, params: dict[str, Any], *, ray_tmp: Path | None = None, timeout: float = 1800,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Run ``script --child name --params JSON`` in a fresh interpreter and return the dict it printed
    after :data:`RESULT_PREFIX` (see :func:`child_main`); its other stdout lines go to stderr.

    The file system's dirty pages are flushed first (``os.sync``), so that no side's timed run pays for the
    write-back of the previous side's output (gigabytes at 1024^3)."""
    os.sync()
    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if ray_tmp is not None:
        ray_tmp.mkdir(parents=True, exist_ok=True)
        env["RAY_TMPDIR"] = str(ray_tmp)
    script = Path(script).resolve()
    cmd = [sys.executable, str(script), "--child", name, "--params", json.dumps(params)]
    proc = subprocess.run(cmd, cwd=cwd or script.parents[1], env=env, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    result = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
        elif line.strip():
            print(line, file=sys.stderr)  # stdout is kept for the JSON lines
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"benchmark child {name!r} of {script.name} failed (exit {proc.returncode}); see its output above")
    return dict(result)


def child_main(children: dict[str, Callable[[dict[str, Any]], dict[str, Any]]], name: str, params: str) -> int:
    """The child side of :func:`run_child`: run ``children[name]`` and print its result."""
    print(RESULT_PREFIX + json.dumps(children[name](json.loads(params))), flush=True)
    return 0


def _pss(pid: int) -> int:
    """Proportional set size (shared pages divided among the processes that map them), in bytes."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


#: Ray's per-node agents also name their processes ``ray::...``: daemons, not workers.
RAY_AGENTS = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")


class RssSampler(threading.Thread):
    """Peaks, sampled every ``interval`` s, of the summed memory of this process plus its Ray worker
    processes (cmdline ``ray::_Actor...``, the actors running the blocks), and separately of idle Ray
    workers (``ray::IDLE``) and of Ray's daemons (every other descendant, Ray's agents among them). Both RSS (each process's
    resident pages, shared library pages counted once per process) and PSS (shared pages split
    among the processes that share them: the sum is what the processes together occupy)."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.peak: dict[str, int] = {"work_rss": 0, "work_pss": 0, "driver_rss": 0, "workers_rss": 0, "worker_max_rss": 0, "idle_rss": 0, "daemons_rss": 0}
        self.samples = 0
        self._halt = threading.Event()

    def sample(self) -> None:
        import psutil

        own = int(self.me.memory_info().rss)
        now = {"work_rss": own, "work_pss": _pss(self.me.pid), "driver_rss": own, "workers_rss": 0, "worker_max_rss": 0, "idle_rss": 0, "daemons_rss": 0}
        try:
            children = self.me.children(recursive=True)
        except psutil.Error:
            children = []
        for c in children:
            try:
                rss = int(c.memory_info().rss)
                cmd = (c.cmdline() or [""])[0]
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if cmd.startswith("ray::IDLE"):
                now["idle_rss"] += rss
            elif cmd.startswith("ray::") and not cmd.startswith(RAY_AGENTS):
                now["work_rss"] += rss
                now["workers_rss"] += rss
                now["worker_max_rss"] = max(now["worker_max_rss"], rss)  # the largest single worker: flat as the volume grows?
                now["work_pss"] += _pss(c.pid)
            else:
                now["daemons_rss"] += rss
        for k, v in now.items():
            self.peak[k] = max(self.peak[k], v)
        self.samples += 1

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def stop(self) -> dict[str, int]:
        self._halt.set()
        self.join()
        self.sample()
        return dict(self.peak)
