"""Typed YAML configs: unknown keys, wrong types, missing keys and bad files are one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.config import Config, apply_overrides, load_config
from engine.errors import ConfigError


class Optim(Config):
    lr: float = 1e-3
    steps: int = 10


class Run(Config):
    name: str
    optim: Optim = Optim()


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_load_with_defaults_and_overrides(tmp_path: Path) -> None:
    cfg = load_config(Run, _write(tmp_path, "name: a\noptim:\n  lr: 0.1\n"), overrides=["optim.steps=5"])
    assert cfg.name == "a" and cfg.optim.lr == 0.1 and cfg.optim.steps == 5
    assert Run.model_validate_json(cfg.model_dump_json()) == cfg
    assert cfg.digest() == load_config(Run, None, ["name=a", "optim.lr=0.1", "optim.steps=5"]).digest()
    assert cfg.digest() != load_config(Run, None, ["name=b"]).digest()


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("name: a\noptim:\n  learning_rate: 1\n", [], "unknown key 'optim.learning_rate'"),
        ("name: a\nbogus: 1\n", [], "unknown key 'bogus'"),
        ("optim:\n  lr: 1\n", [], "missing required key 'name'"),
        ("name: a\noptim:\n  steps: many\n", [], "bad value for 'optim.steps'"),
        ("name: a\n", ["optim.lr"], "not of the form key=value"),
        ("- a\n- b\n", [], "must hold a mapping"),
        ("name: [a\n", [], "not valid YAML"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, overrides: list[str], expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Run, _write(tmp_path, text), overrides)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_key_lists_allowed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="allowed keys here: lr, steps"):
        load_config(Run, _write(tmp_path, "name: a\noptim:\n  lrr: 1\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Run, tmp_path / "nope.yaml")


def test_overrides_do_not_mutate_input() -> None:
    data = {"optim": {"lr": 1}}
    out = apply_overrides(data, ["optim.lr=2"])
    assert data["optim"]["lr"] == 1 and out["optim"]["lr"] == 2
