"""The ``connectile`` command as a user runs it: real processes, real local Ray clusters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "engine.cli"]


def run(*args: str, timeout: float = 300, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, env={**clean, **(env or {})})


def test_help_lists_the_commands() -> None:
    out = run("--help")
    assert out.returncode == 0
    for command in ("demo", "ingest", "synth"):
        assert command in out.stdout


def test_demo_print_config_shows_the_overrides(tmp_path: Path) -> None:
    """``--print-config`` prints what would run: with ``--set`` applied (it printed the embedded default before)."""
    import yaml

    out = run("demo", "--out", str(tmp_path / "d"), "--print-config", "--set", "annotate.heldout_boxes=1", "--set", "train.steps=7")
    assert out.returncode == 0, out.stderr
    cfg = yaml.safe_load(out.stdout)
    assert cfg["annotate"]["heldout_boxes"] == 1 and cfg["train"]["steps"] == 7 and not (tmp_path / "d").exists()


def test_demo_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    """``connectile demo --tiny``: the whole pipeline (one round) ends with the metrics, the report and a
    neuroglancer link; running it again skips every stage."""
    out = tmp_path / "demo"
    args = ("demo", "--tiny", "--rounds", "1", "--out", str(out), "--shape", "16,64,96", "--chunks", "8,64,64", "--backend", "serial", "--no-progress")
    first = run(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())["stages"]
    expected = ["synth", "embed", "selection", "annotate", "train", "ceiling", "predict[1]", "label[1]", "score[1]", "query[1]", "review[1]", "finetune[1]",
                "predict[2]", "label[2]", "score[2]", "metrics", "report"]
    assert sorted(manifest) == sorted(expected) and all(e["status"] == "done" for e in manifest.values())
    assert f"{len(expected)} stage(s) ran, 0 done already" in first.stdout
    assert "| 1 | base (train) |" in first.stdout and "| 2 | after 1 round(s)" in first.stdout
    ceiling = json.loads((out / "ceiling" / "metrics.json").read_text())
    assert f"IoU {ceiling['iou']:.3f}, Dice {ceiling['dice']:.3f}." in first.stdout  # the ceiling under the table
    assert f"report: {out / 'report.md'}" in first.stdout and "neuroglancer-demo.appspot.com/#!" in first.stdout
    assert (out / "selection" / "picks.png").stat().st_size > 1000

    again = run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"0 stage(s) ran, {len(expected)} done already" in again.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("demo", "--shape", "16,64"), "--shape must be three comma-separated numbers"),
        (("demo", "--shape", "4,8,8"), "smaller than one chunk"),
        (("demo", "--workers", "0"), "--workers must be at least 1"),
        (("ingest", "/nonexistent/slices", "x.zarr/raw"), "/nonexistent/slices"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    out = run(*args, "--no-progress")
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith(f"connectile {args[0]}: error:")


def test_local_cluster_dashboard_binds_to_loopback() -> None:
    code = textwrap.dedent(
        """
        import ray
        from engine.runtime import connect
        info = connect(num_cpus=1)
        print("URL", ray._private.worker.global_worker.node.address_info["webui_url"])
        print("STARTED", info.started_here)
        """
    )
    clean = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=clean)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "STARTED True" in out.stdout
    url = next(line.split()[1] for line in out.stdout.splitlines() if line.startswith("URL"))
    assert url.startswith("127.0.0.1:")


def test_the_parser_imports_neither_torch_nor_ray() -> None:
    """Every command's flags are built at start-up (generated from the ops' settings in engine.params):
    ``connectile --help`` and every command's start must not pay for torch or Ray (seconds each)."""
    import subprocess
    import sys

    code = ("import sys, io, contextlib\nsys.argv = ['connectile', '--help']\nfrom engine.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    try:\n        main()\n    except SystemExit:\n        pass\n"
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]", out


def test_every_command_is_one_declaration_with_its_settings_as_flags() -> None:
    """Issue 15: each sub-command module declares its parser as one :class:`Command` (name = module name,
    shared flags from engine.commands._command); a command that takes an op's settings has a flag for
    each of them, in the group its declaration names."""
    import argparse
    import importlib
    import pkgutil

    import engine.commands as commands
    from engine.commands._command import Command, Settings
    from engine.commands._flags import flag

    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    assert len(names) >= 20
    for name in names:
        spec = getattr(importlib.import_module(f"engine.commands.{name}").add_parser, "__self__", None)
        assert isinstance(spec, Command) and spec.name == name.replace("_", "-"), name
        parser = spec.add_parser(argparse.ArgumentParser().add_subparsers())
        for item in spec.flags:
            if isinstance(item, Settings):
                group = next(g for g in parser._action_groups if g.title == item.title)
                shown = {s for a in group._group_actions for s in a.option_strings}
                assert {flag(f) for f in item.model.model_fields if f not in item.skip} <= shown, name
