"""``connectile bench``: run the benchmark scripts of ``benchmarks/`` on a cluster and tabulate them."""

from engine.bench.runner import BenchScript, bench_rows, discover_scripts, hardware_info, run_suite, stage_costs, table

__all__ = ["BenchScript", "bench_rows", "discover_scripts", "hardware_info", "run_suite", "stage_costs", "table"]
