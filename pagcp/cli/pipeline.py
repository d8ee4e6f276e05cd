"""The steps of a ``pagcp.prune`` run and the files they leave, so that a killed run continues where it stopped.

A run is one or more *cycles* followed by the final fine-tune. A cycle searches one PAGCP round on the current
model (re-traced: after the first cycle it is the previous cycle's sliced, fine-tuned model), slices it,
validates it and fine-tunes it. With one cycle (the default) the cycle's fine-tune is the final one and its
files lie at the top of the run folder; with ``--cycles N`` each cycle has a folder ``cycleK/``:

- ``state.json``: the search state (written after every unit; the search resumes from it);
- ``pruned.pt``: the cycle's pruned model; ``finetune/``: its fine-tuning run (resumes from
  ``weights/last.pt``); ``finetuned.pt``: the fine-tuned model.

At the top: ``validation.json`` (the mAP of every model validated so far, so a resumed run does not validate
again), ``oracle_images.txt`` (the images the search looked at), and with cycles the final ``pruned.pt``
(the last cycle's), ``finetune/`` and ``finetuned.pt``. A step is skipped when its file exists, so any kill,
in a search, a fine-tune or a validation, loses at most the unit, epoch or validation in progress.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from pagcp.devices import barrier, distributed_env, is_main_process
from pagcp.engine.settings import PruneSettings

log = logging.getLogger("pagcp.prune")


@dataclass
class CycleRecord:
    """One row of the report's cycle table."""

    cycle: int
    round: int
    gflops: float
    params: int
    map50_pruned: float
    map50_95_pruned: float
    map50_finetuned: float | None
    map50_95_finetuned: float | None
    search_seconds: float
    evaluations: int
    stop_rule: str


class ValidationCache:
    """mAP of the models of a run by label (``original``, ``cycle 1 pruned``...), kept in ``validation.json``."""

    def __init__(self, path: Path, job: Any, args: argparse.Namespace):
        self.path, self.job, self.args = path, job, args
        self.done: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.is_file() else {}

    def __call__(self, model: nn.Module, label: str) -> dict[str, float]:
        """mAP50 and mAP50-95 of ``model`` (the main process validates; every process gets the figures)."""
        from pagcp.detection.evaluate import evaluate
        from pagcp.devices import broadcast_object, is_main_process
        from pagcp.runs import write_json_atomic

        if label not in self.done:
            figures = None
            if is_main_process():
                log.info("validating the %s model (val split of %s, %d px)", label, self.args.data, self.job.img)
                r = evaluate(self.job.family.for_validation(model), self.job.cfg, img_size=self.job.img, batch_size=32,
                             device=self.job.device, workers=self.args.workers, progress=True)  # fmt: skip
                figures = {"map50": r["map50"], "map50_95": r["map50_95"]}
            self.done[label] = broadcast_object(figures)
            if is_main_process():
                write_json_atomic(self.path, self.done)
        return self.done[label]


class PruneRun:
    """Runs (or continues) the cycles and the final fine-tune of one run folder; see the module docstring."""

    def __init__(self, args: argparse.Namespace, job: Any, settings: PruneSettings, run_dir: Path):
        self.args, self.job, self.settings, self.run_dir = args, job, settings, run_dir
        self.cycles = max(1, args.cycles)
        self.family = job.family
        self.validate = ValidationCache(run_dir / "validation.json", job, args)
        self.flops_original = 0.0
        self.last_cycle = 0
        self.meta_base = {"source": str(args.weights), "img_size": job.img, "pagcp": settings.to_dict()}

    def cycle_dir(self, c: int) -> Path:
        return self.run_dir if self.cycles == 1 else self.run_dir / f"cycle{c + 1}"

    def run(self) -> dict[str, Any]:
        """Every step; returns the figures of the report (models, mAP, cycles, the rule that ended the run)."""
        from pagcp import model_stats

        job = self.job
        self.flops_original = model_stats(job.model, job.img)["gflops"]
        self._write_oracle_images()
        before = self.validate(job.model, "original")
        model, records, results, pruned = job.model, [], [], None
        for c in range(self.cycles):
            self.last_cycle = c
            barrier()  # every process decides from the same files which steps are done
            result, pruned = self._search(c, model)
            results.append(result)
            after = self.validate(pruned, "pruned" if self.cycles == 1 else f"cycle {c + 1} pruned")
            epochs = self.args.finetune_epochs if self.cycles == 1 else self.args.cycle_epochs
            model = self._finetune(pruned, self.cycle_dir(c), epochs, c)
            label = "fine-tuned" if self.cycles == 1 else f"cycle {c + 1} fine-tuned"
            tuned = self.validate(model, label) if epochs > 0 else None  # no epochs: the pruned model, validated
            records.append(self._record(c, pruned, result, after, tuned))
            if self._met(records[-1].gflops):
                break
        final, stop_rule = self._final(pruned, model, records), self._stop_rule(records)
        if "not reached" in stop_rule:
            log.warning("%s", stop_rule)
        return {**final, "map50_before": before["map50"], "map50_95_before": before["map50_95"],
                "cycles": [dataclasses.asdict(r) for r in records], "stop_rule": stop_rule,
                "result": results[-1], "evaluations": sum(r.evaluations for r in records),
                "search_seconds": sum(r.search_seconds for r in records)}  # fmt: skip

    def _final(self, pruned: nn.Module, model: nn.Module, records: list[CycleRecord]) -> dict[str, Any]:
        """With cycles: the last cycle's pruned model at the top, and the final fine-tune of the last model."""
        tuned_figures = None
        if self.cycles > 1:
            if is_main_process() and not (self.run_dir / "pruned.pt").is_file():
                self.family.save(pruned, self.run_dir / "pruned.pt", **self._meta(pruned))
            if self.args.finetune_epochs > 0:
                model = self._finetune(model, self.run_dir, self.args.finetune_epochs, None)
                tuned_figures = self.validate(model, "fine-tuned")
        elif self.args.finetune_epochs > 0:
            tuned_figures = self.validate(model, "fine-tuned")
        last = records[-1]
        tuned = self.run_dir / "finetuned.pt"
        return {
            "map50_after": last.map50_pruned, "map50_95_after": last.map50_95_pruned,
            "map50_finetuned": tuned_figures["map50"] if tuned_figures else None,
            "map50_95_finetuned": tuned_figures["map50_95"] if tuned_figures else None,
            "pruned": str(self.run_dir / "pruned.pt"), "finetuned": str(tuned) if tuned.is_file() else None,
            "final_model": model,
        }  # fmt: skip

    def _stop_rule(self, records: list[CycleRecord]) -> str:
        last = records[-1].stop_rule
        if self.cycles == 1:
            return last
        if self.settings.target_gflops is None:
            return f"{self.cycles} cycles (no --target-gflops); last round: {last}"
        if not self._met(records[-1].gflops):
            return f"target {self.settings.target_gflops:g} x not reached in {len(records)} cycles: {last}"
        return f"cycle {len(records)} of at most {self.cycles}: {last}"

    def _write_oracle_images(self) -> None:
        from pagcp.engine.yolo import subset_indices
        from pagcp.runs import write_text_atomic

        if not is_main_process():
            return
        files = self.job.files
        chosen = [files[i] for i in subset_indices(len(files), self.args.subset, self.args.seed)]
        write_text_atomic(self.run_dir / "oracle_images.txt", "".join(f"{f}\n" for f in chosen))

    def _cycle_settings(self, c: int, model_gflops: float) -> PruneSettings:
        """Round r + c. Without a target: one round per cycle. With --target-gflops F, the cycles share it: cycle
        c of N runs rounds back to back until its model is at most g·(F/g)^(1/(N−c)) of the original (g: where
        the cycle starts), its waypoint, never going below F; so no cycle is left all that the others did not
        prune, and the last one ends at F. Fractions are converted to the cycle's model, as the engine reads them."""
        s = self.settings
        if self.cycles == 1:
            return s
        if s.target_gflops is None:
            return dataclasses.replace(s, round=s.round + c, max_rounds=1)
        target = min(s.target_gflops * self.flops_original / model_gflops, 0.999999)
        reach = max(target, min(target ** (1 / (self.cycles - c)), 0.999999))
        return dataclasses.replace(s, round=s.round + c, target_gflops=target, reach_gflops=reach)

    def _met(self, gflops: float) -> bool:
        """Whether a model of ``gflops`` meets --target-gflops (within the engine's tolerance, from above)."""
        from pagcp.engine.search import TARGET_TOLERANCE

        target = self.settings.target_gflops
        return target is not None and gflops <= target * self.flops_original * (1 + TARGET_TOLERANCE)

    def _search(self, c: int, model: nn.Module):
        """The cycle's search (continued from its state file when there is one); returns (result, pruned)."""
        from pagcp import model_stats
        from pagcp.engine.oracle import ORACLE_DTYPES
        from pagcp.engine.progress import SearchProgress

        args, job, folder = self.args, self.job, self.cycle_dir(c)
        folder.mkdir(parents=True, exist_ok=True)
        gflops = model_stats(model, job.img)["gflops"]
        settings = self._cycle_settings(c, gflops)
        if self.cycles > 1:
            log.info("cycle %d/%d: round %d on a %.4f GFLOPs model (%.4f x the original)", c + 1, self.cycles,
                     settings.round, gflops, gflops / self.flops_original)  # fmt: skip
        oracle_batch = 2 * args.batch if settings.compat == "reference" else args.batch
        rank, world, _ = distributed_env()
        problem = self.family.problem(model, job.files, job.img, oracle_batch, args.subset, args.seed, job.device,
                                      args.workers, (rank, world))  # fmt: skip
        problem.dtype = ORACLE_DTYPES[args.oracle_dtype]
        problem.replay = args.suffix_replay
        checksum = float(sum(p.detach().double().abs().sum() for p in model.parameters()))
        fingerprint = {"weights": str(args.weights), "data": str(args.data), "img": job.img, "subset": args.subset,
                       "oracle_split": args.oracle_split, "batch": oracle_batch, "seed": args.seed,
                       "oracle_dtype": args.oracle_dtype,
                       "weights_checksum": checksum}  # fmt: skip
        state_path = folder / "state.json"
        desc = "pruning" if self.cycles == 1 else f"cycle {c + 1}/{self.cycles}"
        try:
            with SearchProgress(desc, enabled=is_main_process()) as progress:
                result = problem.prune(settings, state_path=state_path, resume=state_path.is_file(),
                                       progress=progress, fingerprint=fingerprint)  # fmt: skip
        except KeyboardInterrupt:
            log.error("interrupted; continue with: python -m pagcp.prune --resume %s", self.run_dir)
            raise
        pruned = result.model.eval()
        if is_main_process() and not (folder / "pruned.pt").is_file():
            self.family.save(pruned, folder / "pruned.pt", **self._meta(pruned))
        return result, pruned

    def _meta(self, model: nn.Module) -> dict[str, Any]:
        from pagcp import model_stats

        return {**self.meta_base, "gflops": model_stats(model, self.job.img)["gflops"]}

    def _finetune(self, model: nn.Module, folder: Path, epochs: int, c: int | None) -> nn.Module:
        """``epochs`` of fine-tuning into ``folder``/finetune (continued when interrupted) -> finetuned.pt."""
        done = folder / "finetuned.pt"
        if epochs <= 0:
            return model
        barrier()  # every process sees the same files (rank 0 writes them)
        if done.is_file():
            return self.family.load(done, self.job.device)
        source = folder / "pruned.pt"
        if c is None:  # the final fine-tune starts from the last cycle's model
            last_cycle = self.cycle_dir(self.last_cycle)
            source = next(p for p in (last_cycle / "finetuned.pt", last_cycle / "pruned.pt", source) if p.is_file())
        what = "the final fine-tune" if c is None else f"cycle {c + 1}'s fine-tune"
        tuned = self.family.finetune(model, folder, epochs, self.args, self.job.img, source, what)
        if is_main_process():
            self.family.save(tuned, done, **self._meta(tuned))
        return tuned

    def _record(self, c: int, pruned: nn.Module, result: Any, after: dict, tuned: dict | None) -> CycleRecord:
        from pagcp import model_stats

        stats = model_stats(pruned, self.job.img)
        rule = result.stop_rule
        if self.cycles > 1 and self.settings.target_gflops is not None and c > 0:  # the engine's are relative
            rule += f" (of cycle {c + 1}'s model; {stats['gflops'] / self.flops_original:.4f} x the original)"
        return CycleRecord(
            cycle=c + 1, round=self.settings.round + (c if self.cycles > 1 else len(result.history) - 1),
            gflops=stats["gflops"], params=stats["params"], map50_pruned=after["map50"],
            map50_95_pruned=after["map50_95"], map50_finetuned=tuned["map50"] if tuned else None,
            map50_95_finetuned=tuned["map50_95"] if tuned else None, search_seconds=result.seconds,
            evaluations=result.evaluations, stop_rule=rule,
        )  # fmt: skip
