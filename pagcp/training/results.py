"""The record of a training run: ``results.csv`` (one row per epoch), ``steps.csv`` (the training losses
every few batches) and ``results.png``. Both files are appended, so a resumed run continues them.

The plot follows the run's length: with several epochs, one panel per column against the epoch; with few
(``STEP_PLOT_EPOCHS`` or fewer), the training losses are drawn per logging step against the fractional epoch,
and each epoch's validation figures as labelled points, so a one-epoch fine-tune still shows curves.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: runs of at most this many epochs plot their training losses per logging step
STEP_PLOT_EPOCHS = 3


class CsvLog:
    """A CSV file of rows with an ``epoch`` column, appended row by row; a resumed run truncates it first.

    ``fractional``: the column holds epoch + the fraction of it done (epoch e's rows lie in (e, e + 1]).
    """

    def __init__(self, path: Path, columns: Sequence[str], fractional: bool = False):
        self.path, self.columns, self.fractional = path, list(columns), fractional

    def append(self, row: dict[str, Any]) -> None:
        """Add one row (missing columns are left empty)."""
        new = not self.path.exists()
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def truncate(self, epochs: int) -> None:
        """Keep only the rows of the first ``epochs`` epochs (a resumed run rewrites what follows)."""
        if not self.path.exists():
            return
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if self._epoch(float(r["epoch"])) < epochs]
        self.path.unlink()
        for r in rows:
            self.append(r)

    def _epoch(self, value: float) -> int:
        return math.ceil(value) - 1 if self.fractional else int(value)

    def rows(self) -> list[dict[str, float]]:
        """All rows as floats."""
        if not self.path.exists():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            return [
                {k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()} for r in csv.DictReader(f)
            ]


class ResultsLog:
    """``results.csv`` (one row per epoch), ``steps.csv`` (losses per logging step) and ``results.png``."""

    def __init__(self, save_dir: str | os.PathLike, columns: Sequence[str], step_columns: Sequence[str] = ()):
        self.epochs = CsvLog(Path(save_dir) / "results.csv", columns)
        self.steps = CsvLog(Path(save_dir) / "steps.csv", ["epoch", *step_columns], fractional=True)
        self.csv = self.epochs.path
        self.png = Path(save_dir) / "results.png"
        self.columns = list(columns)

    def append(self, row: dict[str, Any], steps: Sequence[dict[str, Any]] = ()) -> None:
        """Add one epoch's values and its logging steps (``epoch`` there is fractional: epoch + done/batches)."""
        for step in steps:
            self.steps.append(step)
        self.epochs.append(row)

    def truncate(self, epochs: int) -> None:
        """Keep only the first ``epochs`` epochs of both files (a resumed run rewrites what follows)."""
        self.epochs.truncate(epochs)
        self.steps.truncate(epochs)

    def rows(self) -> list[dict[str, float]]:
        """All epoch rows as floats."""
        return self.epochs.rows()

    def plot(self) -> None:
        """``results.png``: per-step curves for short runs, else one panel per column against the epoch."""
        rows = self.rows()
        if not rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = self.steps.rows()
        if len(rows) <= STEP_PLOT_EPOCHS and steps:
            fig = _plot_steps(plt, rows, steps, [c for c in self.steps.columns if c != "epoch"])
            fig.savefig(self.png, dpi=100)
            plt.close(fig)
            return
        keys = [c for c in self.columns if c != "epoch"]
        ncols = 5
        nrows = -(-len(keys) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3 * ncols, 2.5 * nrows), tight_layout=True)
        epochs = [r["epoch"] for r in rows]
        for ax, key in zip(axes.ravel(), keys):
            ax.plot(epochs, [r[key] for r in rows], marker=".", linewidth=1.5)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
        for ax in axes.ravel()[len(keys) :]:
            ax.axis("off")
        fig.savefig(self.png, dpi=100)
        plt.close(fig)


def _plot_steps(plt, rows: list[dict[str, float]], steps: list[dict[str, float]], step_keys: list[str]):
    """Training losses per logging step, plus validation figures as labelled points at each epoch's end."""
    metrics = [k for k in rows[0] if k.startswith("metrics/")]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), tight_layout=True)
    x = [s["epoch"] for s in steps]
    for key in step_keys:
        axes[0].plot(x, [s[key] for s in steps], marker=".", linewidth=1.2, label=key.removeprefix("train/"))
    axes[0].set_xlabel("epoch (per logging step)")
    axes[0].set_title(f"training losses, {len(steps)} steps")
    axes[0].legend(fontsize=8)
    ends = [r["epoch"] + 1 for r in rows]
    for key in metrics:
        values = [r[key] for r in rows]
        axes[1].plot(ends, values, marker="o", linewidth=1.2, label=key.removeprefix("metrics/"))
        axes[1].annotate(f"{values[-1]:.3f}", (ends[-1], values[-1]), textcoords="offset points", xytext=(4, 2),
                         fontsize=8)  # fmt: skip
    axes[1].set_xlabel("epochs done")
    axes[1].set_xticks(ends)
    axes[1].set_xlim(0.5, ends[-1] + 0.5)
    axes[1].set_ylim(0, 1.05)
    axes[1].set_title("validation after each epoch")
    axes[1].legend(fontsize=8)
    return fig
