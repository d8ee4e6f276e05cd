"""The per-epoch record of a training run: ``results.csv`` (appended, so a resumed run continues it) and
``results.png``."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class ResultsLog:
    """``results.csv`` (one row per epoch, appended so a resumed run continues it) and ``results.png``."""

    def __init__(self, save_dir: str | os.PathLike, columns: Sequence[str]):
        self.csv = Path(save_dir) / "results.csv"
        self.png = Path(save_dir) / "results.png"
        self.columns = list(columns)

    def append(self, row: dict[str, Any]) -> None:
        """Add one epoch's values (missing columns are left empty)."""
        new = not self.csv.exists()
        with open(self.csv, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})

    def truncate(self, epochs: int) -> None:
        """Keep only the rows of the first ``epochs`` epochs (a resumed run rewrites what follows)."""
        if not self.csv.exists():
            return
        with open(self.csv, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < epochs]
        self.csv.unlink()
        for r in rows:
            self.append(r)

    def rows(self) -> list[dict[str, float]]:
        """All rows as floats."""
        if not self.csv.exists():
            return []
        with open(self.csv, newline="", encoding="utf-8") as f:
            return [
                {k: float(v) if v not in ("", None) else float("nan") for k, v in r.items()} for r in csv.DictReader(f)
            ]

    def plot(self) -> None:
        """One small panel per column against the epoch, written to ``results.png`` (matplotlib, Agg)."""
        rows = self.rows()
        if not rows:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

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
