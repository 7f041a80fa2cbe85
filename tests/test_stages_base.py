"""The shared parts of the pipeline's stages (:mod:`engine.pipeline.stages._base`): a stage declared by
its class statement's keywords registers as one declared by class attributes, and the blockwise options
come from the stage's context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine.config import Config
from engine.pipeline.rounds import ROUND_STAGES
from engine.pipeline.stage import STAGES, RuntimeSection, Stage, StageContext, discover
from engine.pipeline.stages._base import DeclaredStage, blockwise_options


class _Section(Config):
    source: str
    extra: str | None = None


def test_a_declared_stage_registers_like_an_attribute_stage() -> None:
    class Attrs(Stage):
        name = "test_decl_attrs"
        config = _Section
        inputs = ("source", "extra")
        outputs = ("out",)
        order = 77

        def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
            return {}

    class Declared(DeclaredStage, name="test_decl_kw", config=_Section, inputs=("source", "extra"), outputs=("out",), order=77):
        def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
            return {}

    class RoundDeclared(Declared, name="", kind="test_decl_round", order=5):
        pass

    try:
        assert STAGES["test_decl_kw"] is Declared
        assert "test_decl_kw" not in ROUND_STAGES
        fields = ("config", "inputs", "outputs", "order", "last", "kind")
        assert {f: getattr(Declared, f) for f in fields} == {f: getattr(Attrs, f) for f in fields}
        # a subclass keeps what it does not declare again; a round stage registers by its kind
        assert ROUND_STAGES["test_decl_round"] is RoundDeclared
        assert (RoundDeclared.name, RoundDeclared.config, RoundDeclared.inputs, RoundDeclared.order) == ("", _Section, ("source", "extra"), 5)
        assert Declared.order == 77
    finally:
        for key in ("test_decl_attrs", "test_decl_kw"):
            STAGES.pop(key, None)
        ROUND_STAGES.pop("test_decl_round", None)


def test_a_declared_stage_gets_the_same_checks() -> None:
    with pytest.raises(TypeError, match="not fields of _Section"):

        class Bad(DeclaredStage, name="test_decl_bad", config=_Section, inputs=("nope",)):
            def run(self, ctx: StageContext, cfg: Any) -> dict[str, str]:
                return {}

    assert "test_decl_bad" not in STAGES


def test_the_pipeline_stages_are_declared_stages() -> None:
    stages = {**discover(), **ROUND_STAGES}
    assert {"label", "segment", "embed", "objects", "selection", "report"} <= set(STAGES)
    assert {"predict", "label", "review", "query", "score", "finetune"} <= set(ROUND_STAGES)
    for key, cls in stages.items():
        if cls.__module__.startswith("engine.pipeline.stages."):
            assert issubclass(cls, DeclaredStage), key
            assert cls.name == key or cls.kind == key
    assert STAGES["report"].last and not STAGES["label"].last
    assert ROUND_STAGES["label"].order == 110 and STAGES["label"].order == 60


def test_blockwise_options_come_from_the_context(tmp_path: Path) -> None:
    rt = RuntimeSection(backend="serial", workers=3, max_retries=5, progress=False)
    ctx = StageContext(run_dir=tmp_path, stage="predict[2]", runtime=rt, overwrite=True)
    assert blockwise_options(ctx) == {
        "overwrite": True, "state_dir": tmp_path / ".state" / "round-02" / "predict", "max_retries": 5,
        "backend": "serial", "workers": 3, "address": None, "progress": False,
    }
