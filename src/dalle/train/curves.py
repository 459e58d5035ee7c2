"""curves.png beside metrics.csv: the losses, the learning rate and the throughput of a run.

Drawn with matplotlib's Agg backend (no display) from metrics.csv itself, so a picture always
matches the numbers; written atomically like every file of a run.
"""

from __future__ import annotations

import csv
from pathlib import Path

from dalle.utils import atomic_write

CURVES_NAME = "curves.png"


def _series(rows: list[dict[str, str]], column: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for row in rows:
        if row.get(column):
            steps.append(int(row["step"]))
            values.append(float(row[column]))
    return steps, values


def plot_curves(metrics: str | Path, out: str | Path | None = None) -> Path | None:
    """Draw metrics.csv as `out` (default: curves.png beside it); None when it has no rows yet.

    Panels: every loss column (the stage's total `loss`, its parts and the validation losses),
    the learning rate, and samples per second.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = Path(metrics)
    out = Path(out) if out is not None else metrics.parent / CURVES_NAME
    with metrics.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    columns = list(rows[0])
    losses = [c for c in columns if c == "loss" or c.endswith("_loss") or c in ("nll", "kl")]
    panels = [("loss", losses), ("learning rate", ["lr"]), ("samples / s", ["samples_per_s"])]
    panels = [(title, [c for c in cols if c in columns]) for title, cols in panels]
    panels = [(title, cols) for title, cols in panels if cols]
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), sharex=True,
                                squeeze=False)
    for ax, (title, cols) in zip(axes[:, 0], panels):
        for column in cols:
            steps, values = _series(rows, column)
            ax.plot(steps, values, label=column, marker="." if len(steps) < 20 else None)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
        if len(cols) > 1:
            ax.legend(fontsize=8)
    axes[-1, 0].set_xlabel("step")
    figure.suptitle(metrics.parent.name)
    figure.tight_layout()
    atomic_write(out, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
    return out
