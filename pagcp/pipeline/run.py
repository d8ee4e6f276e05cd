"""``prune_run``: a whole PAGCP run from typed settings, on any registered model family.

    from pagcp.pipeline import RunSettings, prune_run
    report = prune_run(RunSettings(weights="yolov5n-demo", finetune=FinetuneSettings(epochs=1)))

Load and check the model and data (every error before any run folder exists), make the run folder with its
settings, run the cycles (search, slice, validate, fine-tune, :mod:`pagcp.pipeline.cycles`), write the report
(:mod:`pagcp.pipeline.report`) and return it. ``resume`` continues a run folder from its files with its saved
settings (:mod:`pagcp.pipeline.resume`). Under torchrun every process calls it with the same settings: the
oracle's batches are split over the processes, fine-tuning runs DDP, and the main process writes the files.
``python -m pagcp.prune`` turns its flags into :class:`~pagcp.pipeline.settings.RunSettings` and calls this.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from pagcp.devices import (
    broadcast_object,
    describe_device,
    distributed_env,
    init_distributed,
    is_main_process,
    select_device,
)
from pagcp.engine.oracle_data import choose_items
from pagcp.engine.replay import resolve_mode
from pagcp.errors import ConfigError
from pagcp.families import family_for_weights
from pagcp.models.stats import model_stats
from pagcp.pipeline.cycles import Job, PruneRun
from pagcp.pipeline.report import UNIT_FIELDS, write_report
from pagcp.pipeline.resume import new_run_dir, reconcile, resolve_run_dir
from pagcp.pipeline.settings import RunSettings
from pagcp.runs import write_text_atomic

log = logging.getLogger("pagcp.prune")
LATENCY_RUNS = 30


def prune_run(settings: RunSettings | None = None, resume: str | Path | None = None) -> dict[str, Any]:
    """Run (or, with ``resume``: a run folder or "latest", continue) a prune run; returns its report (see the
    module docstring). With ``resume``, ``settings`` may be None (the saved ones) or must share the saved ones'
    results-deciding settings (a difference is refused, naming the flag); its execution settings are used."""
    if settings is None and resume is None:
        settings = RunSettings()
    run_dir = None
    if resume is not None:
        run_dir = resolve_run_dir(resume, settings.project if settings else "runs/prune")
        if (run_dir / "report.json").is_file():
            log.info("%s has finished (its report.json is written); nothing to redo. Results: %s", run_dir,
                     run_dir / "report.md")  # fmt: skip
            return json.loads((run_dir / "report.json").read_text())
        settings = reconcile(run_dir, settings)
    _, world, local_rank = distributed_env()
    own_group = world > 1 and init_distributed(select_device(settings.execution.device, local_rank, world))
    try:
        return _run(settings, run_dir)
    finally:
        if own_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _check_distill(settings: RunSettings, family) -> None:
    """--distill needs a trained teacher (the run's --weights) and a family whose trainer distils."""
    if settings.finetune.distill <= 0:
        return
    if not family.distills:
        raise ConfigError(f"--distill: {family.title} fine-tuning does not distil yet; drop --distill")
    if family.is_config(settings.weights):
        raise ConfigError(f"--distill: --weights {settings.weights} is a model config with untrained weights; the "
                          "teacher is the unpruned --weights, so give a trained checkpoint")  # fmt: skip


def load_job(settings: RunSettings) -> Job:
    """The model, its family and the oracle's items, checked; every error here comes before any run folder."""
    _, world, local_rank = distributed_env()
    device = select_device(settings.execution.device, local_rank, world)
    resolve_mode(settings.execution.suffix_replay, device)
    family = family_for_weights(settings.weights)
    family.check_run(world)
    _check_distill(settings, family)
    o = settings.oracle
    cfg = family.data_config(o.data)
    torch.manual_seed(o.seed)  # a config name gets random weights: the same ones on every (resumed) run
    new = family.is_config(settings.weights)  # a new network: the data's classes (and what else it needs)
    nc, options = (int(cfg["nc"]), family.config_options(cfg)) if new else (None, {})
    model = family.load(settings.weights, nc=nc, device=device, **options)
    family.check_data(model, cfg, settings.weights, o.data)
    if not cfg.get("val"):
        raise ConfigError(f"--data {o.data}: no 'val' split to score the models on")
    split = settings.oracle_split
    if not cfg.get(split):
        raise ConfigError(f"--oracle-split {split}: --data {o.data} has no such split")
    items = family.split_items(cfg, split)
    if not items:
        raise ConfigError(
            f"--oracle-split {split}: the {split} split of --data {o.data} ({cfg[split]}) holds no images; "
            f"add images there, or take the oracle's images from another split (--oracle-split)"
        )
    subset = settings.oracle_subset
    if subset is not None and subset > len(items):
        raise ConfigError(
            f"--subset {subset} is larger than the {split} split of {o.data} ({len(items)} images in {cfg[split]}); "
            f"use --subset all or at most {len(items)}"
        )
    chosen = choose_items(items, subset, o.seed)
    return Job(model, family, cfg, chosen, family.image_size(model, o.img), device)


def _run(settings: RunSettings, run_dir: Path | None) -> dict[str, Any]:
    job = load_job(settings)
    if run_dir is None:  # the main process makes the folder; every process uses it
        run_dir = Path(broadcast_object(str(new_run_dir(settings)) if is_main_process() else None))
    if is_main_process():
        write_text_atomic(run_dir / "oracle_images.txt", "".join(f"{f}\n" for f in job.items))
    subset = settings.oracle_subset
    log.info("run folder %s; device %s; oracle: %s %s images at %d px, batch %d", run_dir,
             describe_device(job.device), "all" if subset is None else subset, settings.oracle_split, job.img,
             settings.oracle_batch)  # fmt: skip
    figures = PruneRun(settings, job, run_dir).run()
    result, final_model = figures.pop("result"), figures.pop("final_model")
    before, after = model_stats(job.model, job.img), model_stats(result.model, job.img)
    family = job.family
    report = {
        "weights": settings.weights, "data": settings.oracle.data, "run_dir": str(run_dir), "family": family.name,
        "metrics": list(family.metrics), "primary_metric": family.primary_metric or family.metrics[0],
        "tasks": list(family.task_names(job.model)), **figures,
        "params_before": before["params"], "params_after": after["params"],
        "gflops_before": before["gflops"], "gflops_after": after["gflops"],
        "img_size": job.img, "subset": len(job.items), "oracle_split": settings.oracle_split,
        "oracle_batch": settings.oracle_batch, "oracle_images": str(run_dir / "oracle_images.txt"),
        "suffix_replay": resolve_mode(settings.execution.suffix_replay, job.device),
        "lambda": result.lam, "settings": settings.search.to_dict(), "run_settings": settings.to_dict(),
        "rounds": len(result.history),
        "units": [{k: round(d[k], 4) if k == "ratio" else d[k] for k in UNIT_FIELDS} for d in result.decisions],
        "processes": distributed_env()[1],
        "commands": family.commands("{weights}", settings.oracle.data, job.img),
    }  # fmt: skip
    if is_main_process():
        report["latency"] = _latency(settings, job, final_model, run_dir)
        write_report(run_dir, report)
    return report


def _latency(settings: RunSettings, job: Job, final_model, run_dir: Path) -> dict[str, Any] | None:
    """ONNX files of the original and final models and their ONNX Runtime CPU latency, side by side."""
    if not settings.execution.latency:
        return None
    from pagcp.deploy import compare_latency

    try:
        onnx = {"original": run_dir / "original.onnx", "pruned": run_dir / "pruned.onnx"}
        for name, model in (("original", job.model), ("pruned", final_model)):
            if not onnx[name].is_file():
                job.family.export_onnx(model, onnx[name], job.img)
        log.info("measuring ONNX Runtime CPU latency (batch 1, %d px) of the original and the pruned model", job.img)
        times = compare_latency(onnx, job.img, runs=LATENCY_RUNS, warmup=5)
    except ConfigError as e:  # onnx / onnxruntime missing, or a family without an export
        log.warning("latency not measured: %s", e)
        return {"error": str(e)}
    return {name: {**t, "onnx": str(onnx[name])} for name, t in times.items()}
