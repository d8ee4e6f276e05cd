"""The steps of a prune run and the files they leave, so that a killed run continues where it stopped.

A run is one or more *cycles* followed by the final fine-tune. A cycle searches one PAGCP round on the current
model (re-traced: after the first cycle it is the previous cycle's sliced, fine-tuned model), slices it,
validates it and fine-tunes it. With one cycle (the default) the cycle's fine-tune is the final one and its
files lie at the top of the run folder; with more, each cycle has a folder ``cycleK/``:

- ``state.json``: the search state (written after every unit; the search resumes from it);
- ``pruned.pt``: the cycle's pruned model; ``finetune/``: its fine-tuning run (the family's trainer continues
  it where it can); ``finetuned.pt``: the fine-tuned model.

At the top: ``validation.json`` (the metrics of every model validated so far, so a resumed run does not
validate again), ``oracle_images.txt`` (the items the search looked at), and with cycles the final
``pruned.pt`` (the last cycle's), ``finetune/`` and ``finetuned.pt``. A step is skipped when its file exists,
so any kill, in a search, a fine-tune or a validation, loses at most the unit, epoch or validation in progress.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pagcp.devices import barrier, broadcast_object, distributed_env, is_main_process
from pagcp.engine.oracle import ORACLE_DTYPES
from pagcp.engine.oracle_data import shard_batches
from pagcp.engine.search import TARGET_TOLERANCE
from pagcp.engine.settings import PruneSettings
from pagcp.families import Family, FinetuneJob
from pagcp.models.stats import model_stats
from pagcp.pipeline.settings import RunSettings
from pagcp.runs import write_json_atomic

log = logging.getLogger("pagcp.prune")


@dataclass
class Job:
    """The checked inputs of a run: the model, its family, the data config, the oracle's items (the drawn
    subset of its split), the image size and the device."""

    model: nn.Module
    family: Family
    cfg: dict[str, Any]
    items: list[str]
    img: int
    device: torch.device


class ValidationCache:
    """The family's metrics of the models of a run by label (``original``, ``cycle 1 pruned``...), kept in
    ``validation.json``."""

    def __init__(self, path: Path, job: Job, settings: RunSettings):
        self.path, self.job, self.settings = path, job, settings
        self.done: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.is_file() else {}

    def __call__(self, model: nn.Module, label: str) -> dict[str, float]:
        """Metrics of ``model`` on the val split (the main process validates; every process gets the figures)."""
        if label not in self.done:
            figures = None
            if is_main_process():
                log.info("validating the %s model (val split of %s, %d px)", label, self.settings.oracle.data,
                         self.job.img)  # fmt: skip
                figures = self.job.family.validate(model, self.job.cfg, self.job.img, self.job.device,
                                                   workers=self.settings.execution.workers)  # fmt: skip
            self.done[label] = broadcast_object(figures)
            if is_main_process():
                write_json_atomic(self.path, self.done)
        return self.done[label]


def _rows(prefix: str, figures: dict[str, float] | None, metrics: tuple[str, ...]) -> dict[str, float | None]:
    return {f"{m}_{prefix}": (figures[m] if figures else None) for m in metrics}


def cycle_settings(s: PruneSettings, c: int, cycles: int, start: float,
                   original_widths: dict[str, int] | None = None) -> PruneSettings:  # fmt: skip
    """Cycle ``c`` of ``cycles`` searches round r + c, its model at ``start`` × the original GFLOPs. Without a
    target: one round per cycle. With --target-gflops F, the cycles share it: cycle c of N runs rounds back to
    back until its model is at most g·(F/g)^(1/(N−c)) of the original (g = ``start``), its waypoint, never going
    below F; so no cycle is left all that the others did not prune, and the last one ends at F. Fractions are
    converted to the cycle's model, as the engine reads them. After the first cycle, --min-width's floors count
    from ``original_widths`` (the first cycle's)."""
    if cycles == 1:
        return s
    if c > 0 and original_widths is not None:
        s = dataclasses.replace(s, original_widths=original_widths)
    if s.target_gflops is None:
        return dataclasses.replace(s, round=s.round + c, max_rounds=1)
    target = min(s.target_gflops / start, 0.999999)
    reach = max(target, min(target ** (1 / (cycles - c)), 0.999999))
    return dataclasses.replace(s, round=s.round + c, target_gflops=target, reach_gflops=reach)


def floor_widths(s: PruneSettings, first: Any) -> dict[str, int] | None:
    """The widths --min-width measures every later cycle by: the units of the first cycle's search result
    ``first`` (None without a floor)."""
    return {u.name: u.size for u in first.graph.units} if s.min_width > 0 else None


def target_met(s: PruneSettings, fraction: float) -> bool:
    """Whether a model at ``fraction`` of the original GFLOPs meets --target-gflops (within the engine's
    tolerance, from above)."""
    return s.target_gflops is not None and fraction <= s.target_gflops * (1 + TARGET_TOLERANCE)


class PruneRun:
    """Runs (or continues) the cycles and the final fine-tune of one run folder; see the module docstring."""

    def __init__(self, settings: RunSettings, job: Job, run_dir: Path):
        self.settings, self.job, self.run_dir = settings, job, run_dir
        self.search = dataclasses.replace(settings.search, backbone_layers=job.family.backbone_layers(job.model))
        self.cycles = settings.finetune.cycles
        self.family = job.family
        self.metrics = tuple(job.family.metrics)
        self.validate = ValidationCache(run_dir / "validation.json", job, settings)
        self.flops_original = 0.0
        self.last_cycle = 0
        #: the first cycle's unit widths, which --min-width is a fraction of in every later cycle
        self.original_widths: dict[str, int] | None = None
        self.meta_base = {"source": settings.weights, "img_size": job.img, "pagcp": self.search.to_dict()}

    def cycle_dir(self, c: int) -> Path:
        return self.run_dir if self.cycles == 1 else self.run_dir / f"cycle{c + 1}"

    def run(self) -> dict[str, Any]:
        """Every step; returns the figures of the report (models, metrics, cycles, the rule that ended it)."""
        job, ft = self.job, self.settings.finetune
        self.flops_original = model_stats(job.model, job.img)["gflops"]
        before = self.validate(job.model, "original")
        model, records, results, pruned = job.model, [], [], None
        for c in range(self.cycles):
            self.last_cycle = c
            barrier()  # every process decides from the same files which steps are done
            result, pruned = self._search(c, model)
            results.append(result)
            if c == 0:
                self.original_widths = floor_widths(self.search, result)
            after = self.validate(pruned, "pruned" if self.cycles == 1 else f"cycle {c + 1} pruned")
            epochs = ft.epochs if self.cycles == 1 else ft.cycle_epochs
            model = self._finetune(pruned, self.cycle_dir(c), epochs, c)
            label = "fine-tuned" if self.cycles == 1 else f"cycle {c + 1} fine-tuned"
            tuned = self.validate(model, label) if epochs > 0 else None  # no epochs: the pruned model, validated
            records.append(self._record(c, pruned, result, after, tuned))
            if self._met(records[-1]["gflops"]):
                break
        final, stop_rule = self._final(pruned, model, records), self._stop_rule(records)
        if "not reached" in stop_rule:
            log.warning("%s", stop_rule)
        return {**final, **_rows("before", before, self.metrics), "cycles": records, "stop_rule": stop_rule,
                "result": results[-1], "evaluations": sum(r["evaluations"] for r in records),
                "search_seconds": sum(r["search_seconds"] for r in records)}  # fmt: skip

    def _final(self, pruned: nn.Module, model: nn.Module, records: list[dict[str, Any]]) -> dict[str, Any]:
        """With cycles: the last cycle's pruned model at the top, and the final fine-tune of the last model."""
        tuned_figures, epochs = None, self.settings.finetune.epochs
        if self.cycles > 1:
            if is_main_process() and not (self.run_dir / "pruned.pt").is_file():
                self.family.save(pruned, self.run_dir / "pruned.pt", **self._meta(pruned))
            if epochs > 0:
                model = self._finetune(model, self.run_dir, epochs, None)
                tuned_figures = self.validate(model, "fine-tuned")
        elif epochs > 0:
            tuned_figures = self.validate(model, "fine-tuned")
        last = records[-1]
        tuned = self.run_dir / "finetuned.pt"
        return {
            **{f"{m}_after": last[f"{m}_pruned"] for m in self.metrics},
            **_rows("finetuned", tuned_figures, self.metrics),
            "pruned": str(self.run_dir / "pruned.pt"), "finetuned": str(tuned) if tuned.is_file() else None,
            "final_model": model,
        }  # fmt: skip

    def _stop_rule(self, records: list[dict[str, Any]]) -> str:
        last, target = records[-1]["stop_rule"], self.search.target_gflops
        if self.cycles == 1:
            return last
        if target is None:
            return f"{self.cycles} cycles (no --target-gflops); last round: {last}"
        if not self._met(records[-1]["gflops"]):
            return f"target {target:g} x not reached in {len(records)} cycles: {last}"
        return f"cycle {len(records)} of at most {self.cycles}: {last}"

    def _cycle_settings(self, c: int, model_gflops: float) -> PruneSettings:
        """The search settings of cycle ``c`` (:func:`cycle_settings`)."""
        return cycle_settings(self.search, c, self.cycles, model_gflops / self.flops_original, self.original_widths)

    def _met(self, gflops: float) -> bool:
        """Whether a model of ``gflops`` meets --target-gflops (within the engine's tolerance, from above)."""
        return target_met(self.search, gflops / self.flops_original)

    def _problem(self, model: nn.Module):
        """The family's problem of ``model`` over the oracle's items (this process's share under torchrun)."""
        s, job = self.settings, self.job
        batches = job.family.oracle_batches(model, job.items, job.img, s.oracle_batch, job.device,
                                            s.execution.workers)  # fmt: skip
        rank, world, _ = distributed_env()
        batches, shard = shard_batches(batches, (rank, world), len(job.items))
        return job.family.problem(model, batches, job.img, job.items, shard=shard,
                                  dtype=ORACLE_DTYPES[s.oracle.dtype], replay=s.execution.suffix_replay)  # fmt: skip

    def _fingerprint(self, model: nn.Module) -> dict[str, Any]:
        """What identifies a cycle's search beside its settings: the model (its weights) and the oracle's data."""
        o = self.settings.oracle
        # summed on the CPU: the same figure whichever device holds the model (the device may change on --resume)
        checksum = float(sum(p.detach().cpu().double().abs().sum() for p in model.parameters()))
        s = self.settings
        return {"weights": s.weights, "data": o.data, "img": self.job.img, "subset": s.oracle_subset,
                "oracle_split": s.oracle_split, "batch": s.oracle_batch, "seed": o.seed, "oracle_dtype": o.dtype,
                "weights_checksum": checksum}  # fmt: skip

    def _search(self, c: int, model: nn.Module):
        """The cycle's search (continued from its state file when there is one); returns (result, pruned)."""
        from pagcp.engine.progress import SearchProgress

        folder = self.cycle_dir(c)
        folder.mkdir(parents=True, exist_ok=True)
        gflops = model_stats(model, self.job.img)["gflops"]
        settings = self._cycle_settings(c, gflops)
        if self.cycles > 1:
            log.info("cycle %d/%d: round %d on a %.4f GFLOPs model (%.4f x the original)", c + 1, self.cycles,
                     settings.round, gflops, gflops / self.flops_original)  # fmt: skip
        problem = self._problem(model)
        state_path = folder / "state.json"
        desc = "pruning" if self.cycles == 1 else f"cycle {c + 1}/{self.cycles}"
        try:
            with SearchProgress(desc, enabled=is_main_process()) as progress:
                result = problem.prune(settings, state_path=state_path, resume=state_path.is_file(),
                                       progress=progress, fingerprint=self._fingerprint(model),
                                       chunk=self.settings.execution.chunk)  # fmt: skip
        except KeyboardInterrupt:
            log.error("interrupted; continue with: python -m pagcp.prune --resume %s", self.run_dir)
            raise
        pruned = result.model.eval()
        if is_main_process() and not (folder / "pruned.pt").is_file():
            self.family.save(pruned, folder / "pruned.pt", **self._meta(pruned))
        return result, pruned

    def _meta(self, model: nn.Module) -> dict[str, Any]:
        return {**self.meta_base, "gflops": model_stats(model, self.job.img)["gflops"]}

    def _finetune(self, model: nn.Module, folder: Path, epochs: int, c: int | None) -> nn.Module:
        """``epochs`` of fine-tuning into ``folder``/finetune (continued when interrupted) -> finetuned.pt."""
        done = folder / "finetuned.pt"
        if epochs <= 0:
            return model
        barrier()  # every process sees the same files (rank 0 writes them)
        if done.is_file():
            return self.family.load(done, device=self.job.device)
        source = folder / "pruned.pt"
        if c is None:  # the final fine-tune starts from the last cycle's model
            last_cycle = self.cycle_dir(self.last_cycle)
            source = next(p for p in (last_cycle / "finetuned.pt", last_cycle / "pruned.pt", source) if p.is_file())
        s, ft = self.settings, self.settings.finetune
        job = FinetuneJob(folder=folder, epochs=epochs, source=source, data=s.oracle.data, img=self.job.img,
                          batch=ft.batch, hyp=ft.hyp, device=s.execution.device, workers=s.execution.workers,
                          what="the final fine-tune" if c is None else f"cycle {c + 1}'s fine-tune",
                          distill=ft.distill, teacher=s.weights if ft.distill > 0 else None,
                          seed=s.oracle.seed)  # fmt: skip
        tuned = self.family.finetune(model, job)
        if is_main_process():
            self.family.save(tuned, done, **self._meta(tuned))
        return tuned

    def _record(self, c: int, pruned: nn.Module, result: Any, after: dict, tuned: dict | None) -> dict[str, Any]:
        """One row of the report's cycle table."""
        stats = model_stats(pruned, self.job.img)
        rule = result.stop_rule
        if self.cycles > 1 and self.search.target_gflops is not None and c > 0:  # the engine's are relative
            rule += f" (of cycle {c + 1}'s model; {stats['gflops'] / self.flops_original:.4f} x the original)"
        return {
            "cycle": c + 1, "round": self.search.round + (c if self.cycles > 1 else len(result.history) - 1),
            "gflops": stats["gflops"], "params": stats["params"], **_rows("pruned", after, self.metrics),
            **_rows("finetuned", tuned, self.metrics), "search_seconds": result.seconds,
            "evaluations": result.evaluations, "stop_rule": rule,
        }  # fmt: skip
