"""The one training loop: resume -> step -> log -> evaluate -> save, for every trainer.

Each trainer sets itself up (model, data, optimiser, `accelerator.prepare`) and hands `run_loop` a
`step_fn(step) -> metrics` that does one optimizer step; the loop owns everything around it, so SFT,
reward-model SFT, GRPO, GCPO and the scalar reward model resume and log the same way:

- resume: the newest complete checkpoint (`Checkpoints`) restores weights, optimiser, scheduler and
  every RNG; `state` (an object with `state_dict()` / `load_state_dict(d)`, e.g. a `DataCursor`)
  restores what accelerate does not know, such as the position in the data;
- log: `metrics.jsonl` + TensorBoard (+ wandb) through `MetricLog`; on resume the steps the killed
  run logged after its checkpoint are dropped, so every step appears once;
- evaluate every `run.eval_every` steps and at the end; save every `run.save_every` and at the end
  (a cadence of 0: at the end only);
- finish: `finish(metrics, step, t0, log)` writes the trained model and `final_metrics.json`.

What a trainer must do for a resumed run to repeat an uninterrupted one: draw its data and its
randomness from functions of (seed, step) or from state that `state` or accelerate saves, never
from a stream that the interrupted run had advanced (e.g. one `random.Random` created at start).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from accelerate import Accelerator
from tqdm.auto import tqdm

from earl.config import to_dict
from earl.train.checkpoints import Checkpoints
from earl.train.metrics import MetricLog

StepFn = Callable[[int], dict]  # step (1-based) -> metrics to log at that step ({} to log nothing)
EvalFn = Callable[[int], dict]  # step -> metrics (already named "eval/...")
FinishFn = Callable[[dict, int, float, MetricLog], dict]  # (last metrics, step, start time, log) -> final metrics


class LoopState(Protocol):
    """Trainer state that the accelerator does not checkpoint (e.g. the data position)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def run_loop(cfg, accelerator: Accelerator, name: str, step_fn: StepFn, finish: FinishFn, *, resume: bool = False,
             progress: bool = True, evaluate: EvalFn | None = None, state: LoopState | None = None,
             postfix: str | None = None) -> dict:
    """Run `cfg.run.steps` optimizer steps of `step_fn` with resume, logging, evaluation and saving.

    `cfg` has `out_dir` and `run` (`RunSection`); the objects `step_fn` trains must have gone through
    `accelerator.prepare` before this is called, so that checkpoints hold them. `postfix`: the metric
    shown next to the progress bar.
    """
    out, run = Path(cfg.out_dir), cfg.run
    ckpts = Checkpoints(out, keep=run.keep_checkpoints)
    step = 0
    if resume and (last := ckpts.latest()) is not None:
        saved = ckpts.load(accelerator, last)
        step = saved["step"]
        if state is not None:  # checkpoints written before `loop_state` kept its keys at the top level
            state.load_state_dict({**saved, **saved.get("loop_state", {})})
        accelerator.print(f"resumed from {last} at step {step}")
    log = MetricLog(accelerator, out, name, to_dict(cfg), resumed_step=step if resume else None)
    bar = tqdm(total=run.steps, initial=step, desc=name, disable=not (progress and accelerator.is_main_process))
    t0, metrics = time.time(), {}
    while step < run.steps:
        step += 1
        logged = step_fn(step)
        bar.update(1)
        if logged:
            metrics = dict(logged)
            log.log(step, logged)
            if postfix in logged:
                bar.set_postfix({postfix.split("/")[-1]: f"{logged[postfix]:.3f}"})
        if evaluate is not None and _due(step, run.eval_every, run.steps):
            ev = evaluate(step)
            if ev:
                log.log(step, ev)
                metrics.update(ev)
        if _due(step, run.save_every, run.steps):
            ckpts.save(accelerator, step, {"recipe": to_dict(cfg),
                                           **({"loop_state": state.state_dict()} if state is not None else {})})
    bar.close()
    return finish(metrics, step, t0, log)


def _due(step: int, every: int, last: int) -> bool:
    """Whether a cadence of `every` steps (0: the last step only) falls on `step`."""
    return step == last or (every > 0 and step % every == 0)
