"""Metric logs of a run: `metrics.jsonl` for plots, TensorBoard (and wandb) through accelerate, each
step once even when a run is killed and resumed; and the run's end: the trained model and
`final_metrics.json`."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from accelerate import Accelerator

from earl.io import atomic_write_json, atomic_write_text
from earl.train.lora import save_model


class MetricLog:
    """Scalars to TensorBoard (and wandb) through accelerate, plus `metrics.jsonl` for plots."""

    def __init__(self, accelerator: Accelerator, out_dir: Path, run_name: str, config: dict,
                 resumed_step: int | None = None):
        """`resumed_step`: the step a resumed run restarts after; what the interrupted run logged past
        it is dropped (metrics.jsonl) or purged (TensorBoard), as the resumed run logs it again."""
        self.acc = accelerator
        self.path = Path(out_dir) / "metrics.jsonl"
        self.t0 = time.time()
        if accelerator.is_main_process:
            tb_config = {k: v for k, v in _flatten(config).items() if isinstance(v, (int, float, str, bool))}
            init_kwargs = tracker_init_kwargs(accelerator, Path(out_dir), resumed_step)
            if resumed_step is not None:
                drop_metrics_after(self.path, resumed_step)
            accelerator.init_trackers(run_name, config=tb_config, init_kwargs=init_kwargs)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.acc.is_main_process:
            return
        metrics = {k: float(v) for k, v in metrics.items()}
        self.acc.log(metrics, step=step)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": round(time.time() - self.t0, 2), **metrics}) + "\n")

    def close(self) -> None:
        self.acc.end_training()


def tracker_init_kwargs(accelerator: Accelerator, out_dir: Path, resumed_step: int | None) -> dict:
    """What each tracker needs so that a resumed run shows every step once.

    - TensorBoard: `purge_step` discards the events at steps after the checkpoint that the killed run
      had written (the resumed run writes them again);
    - wandb: the same run is continued (`id` kept in `out_dir/wandb_run_id`, `resume="allow"`) instead
      of a second run starting at step 0. wandb ignores steps below the last one it received: those are
      the steps the killed run logged past its checkpoint, which a bit-exact resume repeats identically.
    """
    kwargs: dict = {}
    if resumed_step is not None:
        kwargs["tensorboard"] = {"purge_step": resumed_step + 1}
    if any(str(getattr(t, "value", t)) == "wandb" for t in accelerator.log_with):
        id_file = out_dir / "wandb_run_id"
        if not id_file.is_file():
            atomic_write_text(id_file, hashlib.sha256(f"{out_dir.resolve()}:{time.time_ns()}".encode()).hexdigest()[:16])
        kwargs["wandb"] = {"id": id_file.read_text().strip(), "resume": "allow"}
    return kwargs


def drop_metrics_after(path: Path, step: int) -> None:
    """Rewrite metrics.jsonl (atomically) without the lines of steps after `step`, so that each step
    a resumed run logs again appears once; a line torn by a kill (not JSON) goes too, wherever it is:
    a run started again without resuming appends after the torn line, so it need not be the last
    (which is why this repair does not use `earl.io.read_jsonl`, which stops at a bad line)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            kept.append(line + "\n")
    atomic_write_text(path, "".join(kept))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def finish_run(accelerator: Accelerator, model, editor, out_dir: Path, metrics: dict, step: int, t0: float,
               log: MetricLog) -> dict:
    """Save the final editor (main rank; a LoRA run's adapters, `earl.train.lora.save_model`) and
    final_metrics.json; returns the finite final metrics."""

    def save(path: Path) -> None:
        save_model(editor, accelerator.unwrap_model(model), path)

    return write_final(accelerator, out_dir, metrics, step, t0, log, save)


def write_final(accelerator: Accelerator, out_dir: Path, metrics: dict, step: int, t0: float, log: MetricLog,
                save) -> dict:
    """`save(out_dir / "model")` and final_metrics.json on the main rank, after every rank is done."""
    final = {k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}
    final.update(step=step, wall_time_s=round(time.time() - t0, 1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save(Path(out_dir) / "model")
        atomic_write_json(Path(out_dir) / "final_metrics.json", final)
    log.close()
    return final
