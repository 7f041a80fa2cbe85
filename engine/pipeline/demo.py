"""The demo: the whole pipeline on the embedded default config, end to end.

:func:`demo_config` builds the pipeline config (the same as ``jobs/configs/demo.yaml``; a test keeps
them equal) -- synth, embed, selection, annotate (oracle), train, the ceiling (the same training on every
label outside the test region), then per round predict, label, score, query, review (oracle), fine-tune
(the ``rounds:`` section, :mod:`engine.pipeline.rounds`), a final predict/label/score of the last model,
the metrics per round and the report. The synthetic demo segments mitochondria (an object target, so
that the review's accept/reject of whole objects can correct the model): the generator packs them at a
few percent of the voxels and puts dark, mitochondrion-sized bodies (lysosome-like, background in the
labels) in some regions only (:data:`SYNTH_PARAMS`); its last sections are the test region. ``lucchi=True`` gives the real-data variant
(``jobs/configs/demo_lucchi.yaml``: the Lucchi++ mitochondria volume from the shared data folder; 3 whole
sections selected and labelled, a supervised 2.5D U-Net, sections z >= 125 held out as the test region).
:func:`run_demo` runs it with :func:`engine.pipeline.run.run_pipeline` (resumable: a second run skips
finished stages) and returns a summary: the report, the neuroglancer link and the metrics per round.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from engine.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

DEFAULT_SHAPE = (32, 256, 256)
DEFAULT_CHUNKS = (16, 128, 128)
#: rounds of predict -> label -> query -> review -> fine-tune (the model after them is scored too)
DEFAULT_ROUNDS = 2
#: the Lucchi++ demo's test region: sections z >= this (the last 40 of 165)
LUCCHI_TEST_FROM_Z = 125
#: the synthetic demo's generator (engine.synth.SynthParams): mitochondria in every axon, squeezed into thin ones (2-3% of
#: the voxels), and in about 40% of the volume dark lysosome-like bodies that a model trained on a few boxes takes for them
SYNTH_PARAMS: dict[str, Any] = {"mito_squeeze": True, "mito_probability": 1.0, "bodies": 1.0, "body_regions": 0.4, "body_region_scale": 600.0,
                                "body_darkness": 0.5}
#: the synthetic demo's test region: its last sections
SYNTH_TEST_SECTIONS = 8


def demo_config(
    run_dir: str = "runs/demo",
    *,
    shape: Iterable[int] = DEFAULT_SHAPE,
    chunks: Iterable[int] = DEFAULT_CHUNKS,
    seed: int = 0,
    rounds: int = DEFAULT_ROUNDS,
    lucchi: str | None = None,
) -> dict[str, Any]:
    """The demo's pipeline config as a mapping (see the module docstring). ``lucchi``: the folder of
    the Lucchi++ data set (``.../lucchi_pp``) for the real-data variant."""
    if rounds < 1:
        raise ConfigError(f"the demo runs at least 1 round, got {rounds}", "use --rounds 1 or more")
    shape, chunks = [int(v) for v in shape], [int(v) for v in chunks]
    cfg: dict[str, Any] = {"run_dir": run_dir, "runtime": {"backend": "ray", "progress": True}}
    if lucchi is None:
        if shape[0] > 2 * SYNTH_TEST_SECTIONS:  # a smaller volume (a test's) has no test region unless its config sets one
            cfg["test_from_z"] = shape[0] - SYNTH_TEST_SECTIONS
        cfg["synth"] = {"shape": shape, "chunks": chunks, "params": {"seed": seed, **SYNTH_PARAMS}}
        raw, truth, binary, target = "synth.raw", "synth.mito", False, "mask"
        window, block = [1, 128, 128], [shape[0], 256, 256]
        embed = {"input": raw, "patch": [8, 64, 64], "stride": [8, 16, 16], "steps": 60}
        select = {"input": "embed.embeddings", "params": {"budget": 4, "k": 10, "window": [1, 3, 3], "methods": ["coverage", "random", "kcenter"]}}
        # supervised, as for Lucchi++; crops with no mitochondrion kept half the time and positives weighted at most 3x (a
        # weight of 10 made every dark blob an object); mild intensity augmentation (darkness tells bodies from mitochondria)
        train: dict[str, Any] = {"steps": 500, "validate_every": 100, "optimizer": {"lr": 0.003, "schedule": "cosine"},
                                 "sampling": {"reject_empty": 0.5, "max_pos_weight": 3.0},
                                 "augment": {"intensity": 0.3, "noise": 0.3, "blur": 0.2, "elastic": 0.0, "misalign": 0.0, "missing_section": 0.1}}
        min_size = 50
    else:
        # sections 125..164 (the last 40 of 165) are the test region: never selected, labelled or trained on; every score is of them
        cfg["test_from_z"] = LUCCHI_TEST_FROM_Z
        cfg["ingest"] = {"raw": f"{lucchi}/Train_In", "labels": f"{lucchi}/Train_Out", "voxel_size": [5.0, 5.0, 5.0],
                         "chunks": [64, 256, 256], "labels_binarize": True}
        raw, truth, binary, target = "ingest.raw", "ingest.labels", True, "mask"
        window, block = [8, 768, 1024], [64, 512, 512]  # predict: windows of 8 whole sections (below)
        # whole sections: one-section patches on a 6 x 8 grid of 128^2 tiles; a window of 1 x 6 x 8 patches is one whole
        # 768 x 1024 section, so the selection picks 3 whole sections (1.8% of the volume) a person labels as they are
        embed = {"input": raw, "patch": [1, 128, 128], "stride": [2, 128, 128], "steps": 40, "crop": [1, 128, 128]}
        select = {"input": "embed.embeddings", "params": {"budget": 3, "k": 10, "window": [1, 6, 8], "methods": ["coverage", "random", "kcenter"]}}
        # objects under 5000 voxels (a 17^3 cube, 85 nm) are fragments, not mitochondria (median 160k voxels)
        min_size = 5000
        # a plain supervised 2.5D U-Net (the neighbouring sections as channels; the loss on the labelled centre section)
        train = {"steps": 2000, "validate_every": 500, "crop": [3, 256, 256], "batch_size": 4, "threads": 2,
                 "model": {"dims": 2, "context_slices": 1, "filters": [16, 32, 64, 128, 256], "input_kernel_xy": 3, "input_stride": 2},
                 **copy.deepcopy(LUCCHI_RECIPE),
                 "validation_roi": {"start": [LUCCHI_TEST_FROM_Z, 0, 0], "stop": [LUCCHI_TEST_FROM_Z + 8, 768, 1024]}}
    cfg["embed"], cfg["selection"] = embed, select
    cfg["annotate"] = {"boxes": "selection.boxes", "truth": truth, "source": "oracle", "target": target, "boundary": 2, "heldout": 0.25}
    # supervised (semi-supervised mixing lost 0.12 IoU on Lucchi++ and 0.18 on the synthetic mitochondria, benchmarks/RESULTS.md)
    cfg["train"] = {"raw": raw, "labels": "annotate.labels", "boxes": "annotate.boxes", "truth": "annotate.validation", **train}
    cfg["rounds"] = {
        "count": rounds, "model": "train.checkpoint",
        "predict": {"raw": raw, "window": window, "overlap": 0.25, "block": block},
        "label": {"threshold": 0.5, "connectivity": 6, "min_size": min_size, "block": block},
        "score": {"truth": truth, "truth_binary": binary, "target": target, "boundary": 2, "criterion": "iou"},
        "query": {"block": block, "size": 64, "query": small_query()},
        "review": {"source": "oracle", "truth": truth, "truth_binary": binary, "criterion": "iou"},
        # constant 1e-4 (Lucchi++ overrides it with the same): 3e-4 lowered synthetic seeds 0-1, 1e-4 raised 0-2 (RESULTS)
        "finetune": {"steps": 100, "lr": 0.0001},
    }
    if lucchi is None:
        # 16 answers per round (2 per sub-cluster); ring 0 (the band around an accepted object fell on the true rims of the model's
        # too-small mitochondria); a tolerant gate (held-out quarters hold 8-2,399 mitochondrion voxels, too few for a strict one); no
        # label propagation (the query's clusters mix decoy bodies with mitochondria). Why, per seed: benchmarks/RESULTS.md.
        cfg["rounds"]["query"]["query"]["per_cluster"] = 2
        # and 8 boxes of 64^2 per round where the model is least sure (5 seeds: +0.060 +- 0.112 over the base; RESULTS, twelfth session)
        cfg["rounds"]["query"] |= {"boxes": 8, "box": [1, 64, 64]}
        cfg["rounds"]["finetune"] |= {"ring": 0, "gate_confidence": 0.9, "propagate": False} | ANSWER_PAINT | {"erode": 1}
        # the ceiling: the same training on every label outside the test region, scored as the rounds are
        cfg["ceiling"] = {"raw": raw, "truth": truth, "target": target, "boundary": 2, "train": {k: v for k, v in cfg["train"].items() if k not in ("raw", "labels", "boxes", "truth")},
                          "predict": {"window": window, "overlap": 0.25, "block": block}}
    if lucchi is not None:  # a tenth of the base's rate, no propagation, a tolerant gate, the anchor (RESULTS: not on synthetic)
        cfg["rounds"]["finetune"] = dict(LUCCHI_FINETUNE)
        # whole-section windows without overlap and blocks of whole sections: each section computed once, no in-plane
        # halo (256^2 windows at 0.25 overlap in 512^2 blocks cost about 4x as much CPU); one window per forward pass
        cfg["rounds"]["predict"] |= {"overlap": 0.0, "block": [48, 768, 1024], "batch_size": 1}
    cfg["metrics"] = {}
    cfg["report"] = {"title": "Connectile demo" if lucchi is None else "Connectile demo (Lucchi++)"}
    return cfg


#: what the demos' answers teach (rounds.finetune): an accepted object's outer 2 pixels (1 in the synthetic demo, whose
#: mitochondria are small) left unknown, a True says nothing of its edge; the crops around rejected objects weighted as
#: those around accepted ones. On Lucchi++, with no propagation and no ring, the only settings of four tried that never
#: ended below the base in 3 seeds; on the synthetic demo the worst of 5 seeds lost 0.004 instead of 0.050, at the same
#: mean (benchmarks/RESULTS.md, sixth session)
ANSWER_PAINT: dict[str, Any] = {"erode": 2, "balance": True}


#: the Lucchi++ demo's training schedule, augmentation and sampling (a constant rate left the last checkpoint noisy,
#: RESULTS); benchmarks/quality_loop.py trains with the same
LUCCHI_RECIPE: dict[str, Any] = {"optimizer": {"lr": 0.001, "schedule": "cosine"},
                                 "augment": {"intensity": 0.3, "noise": 0.2, "blur": 0.1, "elastic": 0.0, "misalign": 0.0, "missing_section": 0.0},
                                 "sampling": {"reject_empty": 0.5, "max_pos_weight": 3.0}}
#: the Lucchi++ demo's fine-tuning rounds: a tenth of the base's rate, no propagation, a tolerant gate, the anchor (the
#: previous model's segmentation wherever no answer speaks), what the answers paint; benchmarks/quality_loop.py uses the same.
#: Not yet ``average: 0.5``: it helped six round candidates of this recipe offline (RESULTS, eleventh session), but no
#: whole demo has run with it
LUCCHI_FINETUNE: dict[str, Any] = {"steps": 200, "lr": 0.0001, "replay": 0.5, "ring": 0, "propagate": False, "gate_confidence": 0.9, "anchor": 0.5} | ANSWER_PAINT


def find_shared_data(name: str = "lucchi_pp") -> Path:
    """The folder of a real data set in the shared data folder (``/work/shared/data`` or ``../shared/data``)."""
    env = os.environ.get("CONNECTILE_DATA")
    roots = [Path(env)] if env else []
    roots += [Path("/work/shared/data"), Path.cwd().parent / "shared" / "data"]
    for root in roots:
        if (root / name).is_dir():
            return (root / name).resolve()
    raise StorageError(f"the real data set {name!r} is not in {', '.join(str(r) for r in roots)}",
                       "set CONNECTILE_DATA to the shared data folder (it holds lucchi_pp/), or run the synthetic demo without --real")


def small_query() -> dict[str, Any]:
    """The demos' query: 4 x 2 clusters and small VAEs (the paper's 64 x 4 clusters and full-size VAEs, the
    defaults of ``connectile query`` and of ``rounds.query.query``, are for real runs)."""
    vae = {"hidden_dims": [16, 32], "input_size": 32, "epochs": 5, "batch_size": 32}
    return {"n_clusters": 4, "n_sub": 2, "n_init": 1,
            "features": {"mask": {"latent_dim": 8, **vae}, "image": {"latent_dim": 16, **vae}, "image_patches": 256}}


def tiny_overrides() -> dict[str, Any]:
    """Settings that shrink the demo to a test run (seconds): tiny volume, encoder, training, VAEs (for the
    synthetic demo :func:`apply_tiny` also goes back to its earlier neuron-interior target, see there)."""
    vae = {"hidden_dims": [8, 16], "input_size": 16, "epochs": 2, "batch_size": 16}
    q = {"query": {"n_clusters": 2, "n_sub": 1, "n_init": 1, "features": {"mask": {"latent_dim": 4, **vae}, "image": {"latent_dim": 4, **vae}, "image_patches": 32}},
         "size": 32, "boxes": 0}  # the objects' answers only: the box rounds have their own test (tests/test_round.py)
    return {"embed": {"steps": 4, "patch": [8, 32, 32], "stride": [8, 16, 16], "crop": [1, 32, 32], "batch_size": 4},
            "selection": {"params": {"budget": 2, "k": 4, "window": [1, 2, 2], "methods": ["coverage", "random"]}},
            "train": {"steps": 12, "validate_every": 6, "crop": [1, 64, 64], "batch_size": 2, "model": {"dims": 2, "filters": [4, 8], "input_kernel_xy": 3}},
            "window": [1, 64, 64], "query": q, "finetune_steps": 4}


def apply_tiny(cfg: dict[str, Any]) -> dict[str, Any]:
    """The demo config with :func:`tiny_overrides` applied (for tests)."""
    t = tiny_overrides()
    out = copy.deepcopy(cfg)
    out["runtime"] = {"backend": "serial", "progress": False}
    for key in ("embed", "train"):
        out[key] = {**out[key], **t[key]}
    if "ceiling" in out:
        out["ceiling"]["train"] = {**out["ceiling"]["train"], **t["train"]}
        out["ceiling"]["predict"]["window"] = t["window"]
    if "synth" in out:
        # a model of a few steps finds no separate mitochondria (one merged blob, nothing to query): the tiny run, a test of
        # the mechanics, is the synthetic demo as it was before: the generator's defaults, the neurons' interiors (many objects)
        # as the target, the training settings it had
        out["synth"]["params"] = {"seed": out["synth"]["params"]["seed"]}
        old = {k: v for k, v in out["train"].items() if k not in ("optimizer", "sampling", "augment")}
        out["train"] = {**old, "semi": {"box": [16, 16], "unlabelled": 0.2, "inter": 0.2, "warmup_steps": 4}}
        out["ceiling"]["train"] = {k: v for k, v in out["train"].items() if k not in ("raw", "labels", "boxes", "truth")}
        for key in ("ring", "gate_confidence", "propagate", "erode", "balance"):  # the demo's round settings, back to the defaults
            out["rounds"]["finetune"].pop(key, None)
        out["annotate"] |= {"truth": "synth.neurons", "target": "interior"}
        out["rounds"]["score"] |= {"truth": "synth.neurons", "target": "interior"}
        out["rounds"]["review"] |= {"truth": "synth.neurons"}
        out["ceiling"] |= {"truth": "synth.neurons", "target": "interior"}
    out["selection"]["params"] = t["selection"]["params"]
    out["rounds"]["predict"]["window"] = t["window"]
    out["rounds"]["query"] |= t["query"]
    out["rounds"]["finetune"]["steps"] = t["finetune_steps"]
    return out


def demo_yaml(cfg: dict[str, Any], header: str = "") -> str:
    import yaml

    plain = json.loads(json.dumps(cfg))  # no shared lists: no YAML anchors
    return header + yaml.safe_dump(plain, sort_keys=False, default_flow_style=None, width=140)


def run_demo(
    cfg_data: dict[str, Any],
    *,
    overrides: Iterable[str] = (),
    overwrite: bool = False,
    on_stage: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Run the demo config and return ``{"results", "report", "link", "metrics", "run_dir"}``."""
    from engine.pipeline.manifest import Manifest
    from engine.pipeline.run import pipeline_config, run_pipeline
    from engine.pipeline.stages.report import neuroglancer_link

    cfg = pipeline_config(cfg_data, overrides, source="demo config")
    results = run_pipeline(cfg, overwrite=overwrite, on_stage=on_stage)
    run_dir = Path(cfg.run_dir)
    manifest = Manifest(run_dir)
    outs = {n: dict(e.get("outputs", {})) for n, e in manifest.stages.items() if e.get("status") == "done"}
    report_cfg = getattr(cfg, "report", None)
    link = None
    if report_cfg is not None:
        link = neuroglancer_link(outs, run_dir, report_cfg.serve_url, report_cfg.neuroglancer)
    metrics: list[dict[str, Any]] = []
    ceiling = None
    mpath = outs.get("metrics", {}).get("metrics")
    if mpath and os.path.exists(mpath):
        doc = json.loads(Path(mpath).read_text())
        metrics, ceiling = doc["rounds"], doc.get("ceiling")
    return {"results": results, "report": outs.get("report", {}).get("report"), "link": link, "metrics": metrics, "ceiling": ceiling, "run_dir": str(run_dir),
            "serve_port": report_cfg.serve_url.rsplit(":", 1)[-1] if report_cfg is not None else None}


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What ``connectile demo`` prints at the end."""
    from engine.pipeline.stages.metrics import ceiling_line, table_lines

    ran = [r for r in summary["results"] if r.action == "ran"]
    lines = [f"{len(ran)} stage(s) ran, {len(summary['results']) - len(ran)} done already; run folder {summary['run_dir']} (manifest.json)"]
    if summary["metrics"]:
        lines += ["metrics per round (round r: the model after r-1 fine-tunings):", *table_lines(summary["metrics"]), *ceiling_line(summary.get("ceiling"))]
    if summary["report"]:
        lines.append(f"report: {summary['report']}")
    if summary["link"]:
        lines.append(f"neuroglancer: serve the run folder with `connectile view {summary['run_dir']} --port {summary['serve_port']}`, then open:")
        lines.append(summary["link"])
    return lines
