"""Run the benchmark scripts as a user would, collect their JSON lines, and make one table.

Every script in ``benchmarks/`` prints one JSON object per measurement on stdout (``{"bench": ...,
"ratio": ..., "connectile_...": ..., "peer_...": ...}``, with ``ratio`` above 1 meaning Connectile did
better) and its chatter on stderr. :func:`run_suite` runs each script in quick mode in a child process
(pointed at a Ray cluster through ``RAY_ADDRESS`` when an address is given), shows a progress bar, and
returns the lines; :func:`bench_rows` turns them into rows of throughputs and ratios; :func:`table`
formats the rows; :func:`stage_costs` derives the per-voxel costs that ``benchmarks/projection.py`` reads.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

log = logging.getLogger(__name__)

#: Arguments for a quick run of the scripts that have no ``--quick`` option.
QUICK_ARGS: dict[str, list[str]] = {}


@dataclass
class BenchScript:
    """One benchmark script and the arguments of its quick run."""

    name: str
    path: Path
    args: list[str] = field(default_factory=list)


def discover_scripts(folder: Path, only: list[str] | None = None, quick: bool = True, smoke: bool = False) -> list[BenchScript]:
    """The ``bench_*.py`` scripts of ``folder`` (``only``: names such as ``runtime`` or ``cc``);
    ``smoke``: each with ``--smoke`` (seconds, tiny sizes: checks that every script still runs)."""
    if not folder.is_dir():
        raise ConfigError(f"no benchmarks folder at {folder}", "run from a source checkout or give --benchmarks DIR")
    scripts = []
    for path in sorted(folder.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if only and name not in only:
            continue
        text = path.read_text(errors="replace")
        if smoke:
            if '"--smoke"' not in text:
                raise ConfigError(f"{path.name} has no --smoke mode", "add one (tiny sizes, seconds) or leave it out with --only")
            args = ["--smoke"]
        else:
            args = (["--quick"] if '"--quick"' in text else QUICK_ARGS.get(path.name, [])) if quick else []
        scripts.append(BenchScript(name, path, args))
    if only:
        missing = sorted(set(only) - {s.name for s in scripts})
        if missing:
            known = ", ".join(p.stem.removeprefix("bench_") for p in sorted(folder.glob("bench_*.py")))
            raise ConfigError(f"no benchmark named {', '.join(missing)} in {folder}", f"known: {known}")
    if not scripts:
        raise ConfigError(f"no bench_*.py scripts in {folder}")
    return scripts


def run_suite(
    scripts: list[BenchScript], *, address: str | None = None, log_path: Path | None = None, timeout: float = 1800, progress: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run ``scripts`` one after the other; return (JSON lines, per-script status)."""
    from tqdm import tqdm

    env = dict(os.environ)
    env.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    if address:
        env["RAY_ADDRESS"] = address
    lines: list[dict[str, Any]] = []
    status: list[dict[str, Any]] = []
    errfile = open(log_path, "a") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115 - closed below
    bar = tqdm(total=len(scripts), desc="bench", unit="script", disable=not progress)
    try:
        for s in scripts:
            bar.set_postfix_str(s.name)
            t0 = time.monotonic()
            cmd = [sys.executable, str(s.path), *s.args]
            if log_path is not None:
                assert not isinstance(errfile, int)
                errfile.write(f"\n=== {' '.join(cmd)}\n")
                errfile.flush()
            proc = subprocess.Popen(cmd, cwd=s.path.parent.parent, env=env, stdout=subprocess.PIPE, stderr=errfile, text=True)
            assert proc.stdout is not None
            got = 0
            try:
                for raw in proc.stdout:
                    line = _json_line(raw)
                    if line is None:
                        continue
                    line["script"] = s.name
                    # scripts that print rows without a "bench" name: the script's name (a machine
                    # description, a line with "machine" and no ratio, is named as such)
                    line.setdefault("bench", "machine" if "machine" in line and "ratio" not in line else s.name)
                    lines.append(line)
                    got += 1
                    bar.set_postfix_str(f"{s.name}: {line.get('bench')}")
                    if time.monotonic() - t0 > timeout:
                        break
                rc = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            if time.monotonic() - t0 > timeout and proc.poll() is None:
                proc.kill()
                rc = proc.wait()
            status.append({"script": s.name, "command": " ".join([Path(cmd[0]).name, *cmd[1:]]), "returncode": rc, "seconds": round(time.monotonic() - t0, 1), "lines": got})
            bar.update(1)
    finally:
        bar.close()
        if not isinstance(errfile, int):
            errfile.close()
    return lines, status


def _json_line(raw: str) -> dict[str, Any] | None:
    raw = raw.strip()
    if not raw.startswith("{"):
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _throughput(line: dict[str, Any]) -> tuple[float | None, float | None, str]:
    """(Connectile, peer, unit) throughputs of one line, from whichever fields it has."""
    for key, unit in (("blocks_per_s", "blocks/s"), ("mib_per_s", "MiB/s")):
        if f"connectile_{key}" in line:
            return line[f"connectile_{key}"], line.get(f"peer_{key}"), unit
    shape = line.get("shape")
    if "connectile_s" in line and isinstance(shape, list) and shape:
        vox = float(math.prod(int(v) for v in shape))
        c, p = line.get("connectile_s"), line.get("peer_s")
        return (vox / c / 1e6 if c else None), (vox / p / 1e6 if p else None), "Mvoxel/s"
    if "N" in line and line.get("total_s"):  # items (patches, candidates) per second: bench_select.py's rows
        ref = line.get("reference_s", line.get("reference_s_extrapolated"))
        return line["N"] / line["total_s"], (line["N"] / ref if ref else None), "items/s"
    for key, value in line.items():
        if key.startswith("connectile_") and key.endswith("_per_s") and isinstance(value, int | float):
            suffix = key.removeprefix("connectile_")
            return value, line.get(f"peer_{suffix}"), suffix.replace("_per_s", "/s")
    return None, None, ""


def bench_rows(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per measurement line (machine descriptions and skipped benchmarks left out)."""
    rows = []
    for line in lines:
        if line.get("bench") == "machine" or "skipped" in line:
            continue
        c, p, unit = _throughput(line)
        name = str(line["bench"]) + "".join(f":{line[k]}" for k in ("variant", "knn") if k in line) + (f" N={line['N']}" if "N" in line else "")
        extrapolated = "ratio" not in line and "ratio_extrapolated" in line
        ratio = line.get("ratio", line.get("ratio_extrapolated"))
        rows.append({
            "script": line.get("script", ""), "bench": name, "connectile": c, "peer": p, "unit": unit,
            "ratio": ratio if isinstance(ratio, int | float) else None, "peer_name": str(line.get("peer", "")),
            "agree": line.get("agree", line.get("identical_picks")), "meets_target": line.get("meets_target"),
            "extrapolated": extrapolated,
        })
    return rows


def _num(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table (ratio: above 1 means Connectile did better); a peer figure
    extrapolated from smaller sizes (not measured) is marked ``*`` and explained under the table."""

    def mark(r: dict[str, Any], text: str) -> str:
        return text + ("*" if r.get("extrapolated") and text != "-" else "")

    head = ("benchmark", "connectile", "peer", "unit", "ratio", "peer is")
    body = [(r["bench"], _num(r["connectile"]), mark(r, _num(r["peer"])), r["unit"], mark(r, "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"),
             r["peer_name"][:48]) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    fmt = "  ".join(f"{{:{'<' if i in (0, 3, 5) else '>'}{w}}}" for i, w in enumerate(widths))
    out = [fmt.format(*head), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*r) for r in body]
    if any(r.get("extrapolated") for r in rows):
        out.append("* extrapolated, not measured: the peer's time at this size estimated from the largest size it ran")
    return "\n".join(out)


def stage_costs(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-voxel costs (worker-seconds per 10^9 voxels) for ``benchmarks/projection.py``: the
    Gaussian filter (the CPU yardstick, ``filter``) and connected components (``label``)."""
    machine = next((ln for ln in lines if ln.get("bench") == "machine"), {})
    quick = " quick sizes, worker start-up included: an upper bound" if machine.get("quick") else ""
    out: dict[str, dict[str, Any]] = {}
    for line in lines:
        name = {"gaussian": "filter", "connected_components": "label"}.get(str(line.get("bench")))
        if name is None or name in out or not line.get("connectile_s") or not line.get("shape"):
            continue
        gvox = math.prod(int(v) for v in line["shape"]) / 1e9
        workers = int(line.get("workers") or 1)
        out[name] = {
            "worker_s_per_gvox": round(float(line["connectile_s"]) * workers / gvox, 2), "device": "cpu",
            "source": f"connectile bench: {line['bench']} {'x'.join(map(str, line['shape']))}, {workers} workers, {line['connectile_s']} s;{quick}",
        }
    return out


def hardware_info(address: str | None = None) -> dict[str, Any]:
    """This machine (CPU model, cores, memory, GPUs, load) and, with an address, the cluster's resources."""
    from engine.bench.harness import machine_info

    info = machine_info()
    if address:
        code = "import json, ray; ray.init(address=%r, logging_level='ERROR'); print(json.dumps({'resources': ray.cluster_resources(), 'nodes': sum(1 for n in ray.nodes() if n['Alive'])}))"
        try:
            res = subprocess.run([sys.executable, "-c", code % address], capture_output=True, text=True, timeout=90, check=False)
            info["cluster"] = json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 and res.stdout.strip() else {"error": res.stderr.strip()[-300:]}
        except (OSError, subprocess.TimeoutExpired, ValueError) as err:
            info["cluster"] = {"error": str(err)}
    return info
