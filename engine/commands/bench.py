"""``connectile bench [--address RAY_ADDRESS]``: the benchmark suite, as a user runs it.

Runs every ``benchmarks/bench_*.py`` in quick mode (``--full`` for the full sizes) on the Ray cluster
at ``--address`` (default: each script starts a local one), with a progress bar, then prints one
table of throughputs and ratios against the peers (a ratio above 1 means Connectile did better) and
saves it, with every JSON line the scripts printed and the hardware it ran on, as JSON
(default ``benchmarks/results/bench-<time>.json``; ``benchmarks/projection.py`` reads the
``stage_costs`` of a ``--full`` run; a quick run's are saved as ``stage_costs_quick``, upper bounds
dominated by worker start-up). ``--smoke`` runs every script's ``--smoke`` mode instead (seconds, tiny
sizes, no meaningful numbers): the check that each script still runs (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from engine.commands._command import Command, arg, no_progress

REPO = Path(__file__).resolve().parents[2]


def run(args: argparse.Namespace) -> int:
    """Run the suite, print the table, write the JSON; exit 1 if a script failed or disagreed."""
    from engine.bench import bench_rows, discover_scripts, hardware_info, run_suite, stage_costs, table
    from engine.errors import StorageError

    if args.address:
        from engine.runtime.cluster import check_reachable

        check_reachable(args.address, "--address")
    folder = Path(args.benchmarks) if args.benchmarks else next((p for p in (Path.cwd() / "benchmarks", REPO / "benchmarks") if p.is_dir()), REPO / "benchmarks")
    scripts = discover_scripts(folder, args.only, quick=not args.full, smoke=args.smoke)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(args.out) if args.out else folder / "results" / f"bench-{stamp}.json"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".log").write_text("")
    except OSError as err:
        raise StorageError(f"cannot write the results to {out}: {err.strerror or err}", "give --out in a writable folder") from err
    hardware = hardware_info(args.address)
    lines, status = run_suite(scripts, address=args.address, log_path=out.with_suffix(".log"), timeout=args.timeout, progress=args.progress)
    rows = bench_rows(lines)
    print(table(rows))
    for s in status:
        if s["returncode"] != 0:
            print(f"{s['script']}: exited {s['returncode']} after {s['seconds']} s (log: {out.with_suffix('.log')})")
    result = {
        "kind": "connectile-bench", "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "address": args.address,
        "quick": not args.full, "smoke": args.smoke, "hardware": hardware, "scripts": status, "rows": rows,
        # quick sizes are dominated by worker start-up: their costs are kept apart, where projection.py does not look
        ("stage_costs_quick" if not args.full else "stage_costs"): stage_costs(lines), "lines": lines,
    }
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"saved {out}")
    bad = [s for s in status if s["returncode"] != 0] + [r for r in rows if r.get("agree") is False]
    return 1 if bad else 0


add_parser = Command(
    "bench", run, help="run the benchmark suite against the peers and print one table (saved as JSON)", description=__doc__, raw=True, flags=(
        arg("--address", default=None, help="Ray cluster to run on (default: a local cluster per script)"),
        arg("--only", action="append", default=None, metavar="NAME", help="only this benchmark (runtime, cc, ...; repeatable)"),
        arg("--full", action="store_true", help="full sizes instead of quick mode (minutes to hours)"),
        arg("--smoke", action="store_true", help="every script's --smoke mode (seconds, tiny sizes: checks that each still runs; no meaningful numbers)"),
        arg("--out", default=None, help="JSON file to write (default: benchmarks/results/bench-<time>.json)"),
        arg("--benchmarks", default=None, help="folder of the bench_*.py scripts (default: ./benchmarks if present, else the source checkout's)"),
        arg("--timeout", type=float, default=1800, help="seconds per script (default: %(default)s)"), no_progress(),
    ),
).add_parser
