"""Pictures people would rather look at than numbers: labelled image grids and curves."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

from earl.errors import DataError, EarlError
from earl.io import atomic_path, read_jsonl


def image_grid(rows: list[list[Image.Image]], col_labels: list[str] | None = None, scale: int = 2,
               pad: int = 4, label_height: int = 14) -> Image.Image:
    """Rows of equally sized images, upscaled (nearest) by `scale`, with optional column labels on top."""
    if not rows or not rows[0]:
        raise ValueError("image_grid: nothing to draw")
    w, h = rows[0][0].size
    w, h = w * scale, h * scale
    ncol = max(len(r) for r in rows)
    top = label_height if col_labels else 0
    canvas = Image.new("RGB", (ncol * (w + pad) + pad, top + len(rows) * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(col_labels or []):
        draw.text((pad + c * (w + pad), 1), label, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            im = im.convert("RGB").resize((w, h), Image.Resampling.NEAREST)
            canvas.paste(im, (pad + c * (w + pad), top + pad + r * (h + pad)))
    return canvas


def moving_average(points: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    """(step, value) points smoothed by a trailing mean over `window` points (the first window-1 dropped),
    so that a noisy per-step metric such as a GRPO/GCPO reward shows its trend."""
    window = max(1, window)
    return [(points[t][0], sum(v for _, v in points[t - window + 1 : t + 1]) / window)
            for t in range(window - 1, len(points))]


def read_metrics(run: str | Path) -> list[dict]:
    """The rows of a training run's `metrics.jsonl` (`earl.train.metrics.MetricLog`); `run` is the run
    directory or the file itself. A missing or unreadable file raises DataError naming it."""
    path = Path(run)
    path = path / "metrics.jsonl" if path.is_dir() else path
    if not path.is_file():
        raise DataError(f"{path}: no metrics.jsonl (expected a training run's output directory)")
    return read_jsonl(path)


def metric_points(rows: list[dict], key: str) -> list[tuple[float, float]]:
    """(step, value) of `key` in metrics rows, by step; non-numeric and non-finite values are left out.
    A run resumed from a checkpoint logs again the steps after it, so the last value of a step wins."""
    by_step = {}
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            by_step[r["step"]] = float(v)
    return sorted(by_step.items())


def plot_metrics(runs: dict[str, str | Path], keys: list[str], path: str | Path, smooth: int = 1) -> None:
    """One panel per metric in `keys`, one line per run (label -> run directory or metrics.jsonl),
    against the training step; per-step metrics are smoothed by a `smooth`-point moving average,
    metrics logged only at evaluations (fewer than a tenth of the rows) are drawn as points. Each key
    must be logged by at least one run; the error lists what the runs do log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not runs or not keys:
        raise EarlError("plot_metrics: give at least one run and one metric key")
    logs = {label: read_metrics(run) for label, run in runs.items()}
    logged = sorted({k for rows in logs.values() for r in rows for k in r} - {"step", "time"})
    missing = [k for k in keys if k not in logged]
    if missing:
        raise EarlError(f"metric(s) {', '.join(missing)} not logged by {', '.join(map(str, runs.values()))}; "
                         f"logged: {', '.join(logged)}")
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        smoothed = False
        for label, rows in logs.items():
            pts = metric_points(rows, key)
            if not pts:
                continue
            if len(pts) * 10 < len(rows):  # an evaluation metric: few points, each one worth seeing
                ax.plot(*zip(*pts), marker="o", label=label)
            else:
                ax.plot(*zip(*moving_average(pts, smooth)), label=label)
                smoothed = smooth > 1
        ax.set(title=key + (f" (moving avg of {smooth})" if smoothed else ""), xlabel="step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def save_figure(fig, path: str | Path) -> None:
    """Lay out a matplotlib figure, write it as a PNG atomically (a reader never sees half a file) and
    free it (pyplot keeps every open figure alive)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
