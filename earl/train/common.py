"""Pieces every training recipe shares: the accelerator, schedules, checkpoints and metric logs.

Checkpoints: `out_dir/checkpoints/step_0000100/` holds `accelerator.save_state` (model weights in
safetensors; optimizer, scheduler and RNG states - Python, NumPy, torch CPU and CUDA - loaded back
with `weights_only=True`) plus `trainer_state.json` (the step and, in `train_lm`, the data position:
epoch and batch within it). Each is written to a temporary directory and renamed into place, so a
crash mid-save leaves the previous checkpoint intact; `--resume` continues from the newest, and
`train_lm` resumed after a `kill -9` trains on the same batches, with the same random draws, as a
run never stopped (each epoch's shuffle is a function of the run seed and the epoch).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DeepSpeedPlugin, ProjectConfiguration
from accelerate.utils import load as accelerate_load

from earl.data import encode_dataset, resolve_source
from earl.errors import ConfigError
from earl.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class OptimSection:
    """Optimiser and schedule shared by the recipes (AdamW, linear warmup, cosine decay to min_lr)."""

    lr: float = 3e-4
    min_lr: float = 3e-5  # cosine floor
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # max global grad norm; 0 = off

    def __post_init__(self):
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}")


@dataclass
class RunSection:
    """How a run executes: precision, accumulation, distributed backend, logging cadence."""

    steps: int = 1000  # optimizer steps
    batch_size: int = 32  # per process, per micro-step
    # micro-steps per optimizer step. null: the trainer's own value - 1 where a step is one batch (SFT,
    # reward-model SFT), the rollout's micro-batches in GRPO (group_size x prompts_per_step /
    # minibatch_size), 1 in GCPO and rm-scalar; GRPO, GCPO and rm-scalar refuse a value that differs
    grad_accum: int | None = None
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    deepspeed: str | None = None  # path to a DeepSpeed JSON config (e.g. recipes/deepspeed/zero2.json)
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    save_every: int = 200
    keep_checkpoints: int = 2
    wandb: bool = False  # also log to Weights & Biases (WANDB_API_KEY from the environment)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass (big models)

    def __post_init__(self):
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.steps <= 0 or self.batch_size <= 0 or (self.grad_accum is not None and self.grad_accum <= 0):
            raise ValueError("steps, batch_size and grad_accum must be positive")


def settle_grad_accum(run: RunSection, implied: int | None = None, by: str = "") -> int:
    """Fill `run.grad_accum` (null in the recipe) with the value the trainer's batching implies.

    `implied` None: the trainer takes any value (default 1). Otherwise the trainer's own batching
    fixes it (`by` says how), and a recipe value that differs is an error rather than being
    overwritten, since the recipe would not describe the run it made."""
    if implied is None:
        run.grad_accum = 1 if run.grad_accum is None else run.grad_accum
    elif run.grad_accum is None:
        run.grad_accum = implied
    elif run.grad_accum != implied:
        raise ConfigError(f"run.grad_accum: {run.grad_accum} contradicts {by}, which makes {implied} micro-batches "
                          f"per optimizer step; leave run.grad_accum out (or null) or set it to {implied}")
    return run.grad_accum


# DeepSpeed JSON fields whose value is the recipe's: (recipe field, how to read it from (run, optim))
DEEPSPEED_OWNED = {
    "gradient_clipping": ("optim.grad_clip", lambda run, optim: float(optim.grad_clip)),
    "gradient_accumulation_steps": ("run.grad_accum", lambda run, optim: run.grad_accum),
}


def deepspeed_config(path: Path, run: RunSection, optim: OptimSection) -> dict:
    """The DeepSpeed JSON at `path` with the fields the recipe owns filled from the recipe.

    Inside DeepSpeed's engine the JSON's value wins (it clips gradients itself; accelerate's
    clip_grad_norm_ does nothing there), so one number in two files could silently disagree: such
    fields must be "auto" (or absent) in the JSON; a concrete value that differs is refused."""
    if not path.is_file():
        raise ConfigError(f"run.deepspeed: {path} not found (expected a DeepSpeed JSON config)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"run.deepspeed: {path} is not valid JSON ({e})") from None
    for key, (field, read) in DEEPSPEED_OWNED.items():
        value, have = read(run, optim), config.get(key, "auto")
        if have != "auto" and have != value:
            raise ConfigError(f"run.deepspeed: {path} sets {key}: {have}, but the recipe's {field} is {value}; "
                              f"write \"auto\" there (the recipe's {field} is the one source)")
        config[key] = value
    return config


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: the CPU instructions without which bf16 matmuls are emulated."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(check is not None and check() for check in checks)


def effective_precision(requested: str) -> str:
    """The precision a run really uses: bf16 as asked, except on a CPU without native bf16.

    There autocast emulates bf16, and the backward pass crawls: on a 2-core AVX2 EPYC one step of
    the shapes editor (batch 32 x 420 tokens) took 110 s under bf16 autocast against 7 s in fp32.
    A recipe written for a GPU (or a bf16-capable CPU) then trains in fp32, with a warning.
    """
    on_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    if requested == "bf16" and on_cpu and not cpu_has_native_bf16():
        log.warning("run.mixed_precision=bf16: this CPU has no native bf16 (AVX512-BF16/AMX), where autocast "
                    "is many times slower than fp32; training in fp32 instead")
        return "no"
    return requested


def make_accelerator(run: RunSection, out_dir: Path, optim: OptimSection | None = None) -> Accelerator:
    """The run's accelerator; `optim` (the recipe's) fills the DeepSpeed JSON's "auto" fields."""
    settle_grad_accum(run)
    plugin = None
    if run.deepspeed:
        if optim is None:
            raise ValueError("make_accelerator: a DeepSpeed run needs the recipe's optim section")
        plugin = DeepSpeedPlugin(hf_ds_config=deepspeed_config(Path(run.deepspeed), run, optim),
                                 gradient_accumulation_steps=run.grad_accum)
    log_with = ["tensorboard"] + (["wandb"] if run.wandb else [])
    # accelerate keeps one global state per process; several runs in one process (the study, the
    # demo, tests) may differ in precision or plugin, so start each from a clean state while keeping
    # the process group (PartialState) that torchrun set up.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        gradient_accumulation_steps=run.grad_accum,
        # Schedules here count optimizer steps, and each trainer advances its schedule once per optimizer
        # step (`step_schedule`). With the default (True) accelerate's prepared scheduler would instead step
        # the wrapped one num_processes times per optimizer step (it assumes a schedule sized in samples
        # of a per-process batch), so the same recipe ran its warm-up and cosine N times too fast on N
        # ranks. Keeping the scheduler prepared keeps it in save_state/load_state (scheduler.bin).
        step_scheduler_with_optimizer=False,
        mixed_precision=effective_precision(run.mixed_precision),
        deepspeed_plugin=plugin,
        log_with=log_with,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir / "logs")),
    )


def world_size(accelerator: Accelerator) -> int:
    """Ranks actually training: torch.distributed's view (accelerate under-reports with DeepSpeed on CPU)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return accelerator.num_processes


def prepare_backbone(backbone, run: RunSection) -> None:
    """Training-time switches on the backbone: gradient checkpointing (no KV cache while training)."""
    if run.gradient_checkpointing:
        # transformers 5.x renamed it (the old name warns); use whichever this version has
        if hasattr(backbone, "activation_checkpointing_enable"):
            backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        backbone.config.use_cache = False


def make_optimizer(model: torch.nn.Module, opt: OptimSection) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on norms and biases)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas))


def make_scheduler(optimizer, opt: OptimSection, total_steps: int):
    """Linear warm-up over `opt.warmup_steps`, then cosine to `opt.min_lr` at `total_steps`.

    Both counts are optimizer steps, whatever the accumulation or the number of processes: advance
    it with `step_schedule`, never with a bare `scheduler.step()` inside an accumulation window."""
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    return get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=opt.warmup_steps, num_training_steps=total_steps, min_lr=opt.min_lr
    )


def step_schedule(accelerator: Accelerator, scheduler) -> None:
    """Advance the schedule by one optimizer step, where the optimizer really stepped.

    Inside `accelerator.accumulate` the optimizer steps only at the end of the window (sync_gradients),
    and an fp16 step with overflowing gradients is skipped; the schedule moves with the optimizer, so
    it is in optimizer steps on any number of ranks (see `make_accelerator`)."""
    if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
        scheduler.step()


class Checkpoints:
    """Atomic, resumable training checkpoints under `out_dir/checkpoints/`."""

    def __init__(self, out_dir: Path, keep: int = 2):
        self.root = Path(out_dir) / "checkpoints"
        self.keep = keep

    def latest(self) -> Path | None:
        if not self.root.is_dir():
            return None
        done = sorted(p for p in self.root.glob("step_*") if (p / "trainer_state.json").is_file())
        return done[-1] if done else None

    def save(self, accelerator: Accelerator, step: int, state: dict) -> Path:
        final = self.root / f"step_{step:07d}"
        tmp = self.root / f".tmp_step_{step:07d}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            atomic_write_json(tmp / "trainer_state.json", {**state, "step": step})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in sorted(self.root.glob("step_*"))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def load(self, accelerator: Accelerator, path: Path) -> dict:
        """Restore everything `save` wrote; returns trainer_state.json (with "step")."""
        accelerator.load_state(str(path))
        _check_rng_restored(accelerator, path)
        return json.loads((path / "trainer_state.json").read_text())


def _check_rng_restored(accelerator: Accelerator, path: Path) -> None:
    """Fail where `load_state` silently kept the current RNG state (it only logs, at info level, a
    random_states file it could not read), since the resumed run would then draw other numbers."""
    file = path / f"random_states_{accelerator.process_index}.pkl"
    if not file.is_file():
        return  # a checkpoint written by a tool that keeps no RNG state
    saved = accelerate_load(file, weights_only=True)["torch_manual_seed"]
    if not torch.equal(saved, torch.get_rng_state()):
        raise RuntimeError(f"{file}: the torch RNG state was not restored; the resumed run would not "
                           "repeat the interrupted one")


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
    a resumed run logs again appears once; a line torn by the kill (not JSON) goes too."""
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
    """Save the final editor (main rank) and final_metrics.json; returns the finite final metrics."""

    def save(path: Path) -> None:
        editor.backbone = accelerator.unwrap_model(model)
        editor.save_pretrained(path)

    return write_final(accelerator, out_dir, metrics, step, t0, log, save)


def write_final(accelerator: Accelerator, out_dir: Path, metrics: dict, step: int, t0: float, log: MetricLog,
                save) -> dict:
    """`save(out_dir / "model")` and final_metrics.json on the main rank, after every rank is done."""
    import math

    final = {k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)}
    final.update(step=step, wall_time_s=round(time.time() - t0, 1))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save(Path(out_dir) / "model")
        atomic_write_json(Path(out_dir) / "final_metrics.json", final)
    log.close()
    return final


def load_sources(accelerator: Accelerator, sources: list[str], image_tokenizer, tokenizer_dir: Path,
                 cache_dir: Path, image_size: int):
    """Resolve and encode data sources; the main rank generates/encodes first, the others read its cache."""
    with accelerator.main_process_first():
        return [encode_dataset(resolve_source(s, cache_dir, image_size), image_tokenizer, tokenizer_dir, cache_dir,
                               progress=accelerator.is_main_process) for s in sources]


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of one epoch, a function of (run seed, epoch) alone: a resumed run rebuilds
    the interrupted epoch's order from the two numbers instead of storing it."""
    return int.from_bytes(hashlib.sha256(f"earl-data:{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


def shuffle_generators(loader) -> list[torch.Generator]:
    """The generators behind a loader's order: its sampler's and its own, each given one where missing.

    Without one a RandomSampler seeds itself from the global torch RNG at every epoch, and a
    DataLoader draws its workers' base seed from it at every iterator; with generators of their own,
    reseeded per epoch, the order depends on (seed, epoch) only, and the extra iterator a resumed run
    opens mid-epoch takes nothing from the global RNG that dropout or sampling would have drawn."""
    batch_sampler = loader.batch_sampler if loader.batch_sampler is not None else loader.sampler
    while hasattr(batch_sampler, "batch_sampler"):  # accelerate's per-rank shard wraps the real one
        batch_sampler = batch_sampler.batch_sampler
    sampler = getattr(batch_sampler, "sampler", None)
    if sampler is not None and hasattr(sampler, "generator") and sampler.generator is None:
        sampler.generator = torch.Generator()
    base = getattr(loader, "base_dataloader", loader)  # accelerate's wrapper reads, but does not write, through
    if base.generator is None:
        base.generator = torch.Generator()
    found = [base.generator, getattr(sampler, "generator", None)]
    return [g for i, g in enumerate(found) if g is not None and all(g is not h for h in found[:i])]


class DataCursor:
    """The loader's batches, epoch after epoch, with their position (epoch, batch within it) kept.

    Each epoch reseeds the loader's shuffling from `epoch_seed(seed, epoch)`, so a cursor made at a
    saved position opens the same epoch order and skips (without loading them) the batches already
    trained on: the run continues on the batch it would have reached without the interruption."""

    def __init__(self, accelerator: Accelerator, loader, seed: int, epoch: int = 0, batch: int = 0):
        self.acc, self.loader, self.seed = accelerator, loader, seed
        self.epoch, self.batch = epoch, batch
        self._batches = None

    def state(self) -> dict:
        """The position to save: the epoch and how many of its batches were consumed."""
        return {"epoch": self.epoch, "batch": self.batch}

    def __iter__(self):
        return self

    def __next__(self):
        while True:
            if self._batches is None:
                self._batches = iter(self._open_epoch())
            try:
                item = next(self._batches)
            except StopIteration:
                if self.batch == 0:
                    raise ValueError("the training data yields no batch (fewer examples than one batch?)") from None
                self._batches, self.epoch, self.batch = None, self.epoch + 1, 0
                continue
            self.batch += 1
            return item

    def _open_epoch(self):
        """The loader over this epoch: its order reseeded, the first `self.batch` batches skipped."""
        for generator in shuffle_generators(self.loader):
            generator.manual_seed(epoch_seed(self.seed, self.epoch))
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(self.epoch)
        return self.acc.skip_first_batches(self.loader, self.batch) if self.batch else self.loader


def resume_position(state: dict, step: int, micro_steps: int, epoch_batches: int) -> tuple[int, int]:
    """(epoch, batch) at which a checkpoint's run stopped; a checkpoint from before the position was
    saved places it where `step` optimizer steps of `micro_steps` batches each end."""
    if "data" in state:
        return state["data"]["epoch"], state["data"]["batch"]
    log.warning("checkpoint without a data position: continuing after %d batches", step * micro_steps)
    return divmod(step * micro_steps, max(epoch_batches, 1))


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy over the labelled positions; with `loss_weights` in the batch, each
    position's term is weighted and the sum divided by the labelled positions' total weight."""
    if "loss_weights" not in batch:
        return model(**batch).loss
    batch = dict(batch)
    weights, labels = batch.pop("loss_weights")[:, 1:], batch.pop("labels")[:, 1:]
    logits = model(**batch).logits[:, :-1].float()
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                           ignore_index=-100, reduction="none").view_as(labels)
    weights = weights * (labels != -100)
    return (ce * weights).sum() / weights.sum().clamp_min(1e-8)


def train_lm(cfg, accelerator: Accelerator, editor, loader, name: str, resume: bool, progress: bool,
             evaluate=None) -> dict:
    """Teacher-forced training (SFT and the reward model's SFT) as a step function of `run_loop`.

    `cfg` has `out_dir`, `optim` (OptimSection) and `run` (RunSection); `loader` yields collated
    batches with labels; `evaluate(model, step) -> metrics` runs every `run.eval_every` steps.
    The data position (epoch, batch) is part of the checkpoint, so a resumed run trains on the
    batches the interrupted one would have reached.
    """
    from earl.train.loop import run_loop  # here, not at the top: earl.train.loop imports this module

    model = editor.backbone
    prepare_backbone(model, cfg.run)
    optimizer = make_optimizer(model, cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, cfg.run.steps)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    batches = DataCursor(accelerator, loader, cfg.run.seed)
    t0, tokens = time.time(), 0

    def step_fn(step: int) -> dict:
        nonlocal tokens
        model.train()
        for _ in range(cfg.run.grad_accum):
            batch = next(batches)
            with accelerator.accumulate(model):
                loss = lm_loss(model, batch)
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients and cfg.optim.grad_clip > 0:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                step_schedule(accelerator, scheduler)
                optimizer.zero_grad(set_to_none=True)
            tokens += int((batch["labels"] != -100).sum())
        if step % cfg.run.log_every and step != cfg.run.steps:
            return {}
        metrics = {"train/loss": accelerator.reduce(loss.detach(), reduction="mean").item(),
                   "train/lr": scheduler.get_last_lr()[0],
                   "train/target_tokens_per_s": tokens / max(time.time() - t0, 1e-9)}
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        return metrics

    def finish(metrics, step, t_start, log):
        return finish_run(accelerator, model, editor, cfg.out_dir, metrics, step, t_start, log)

    def run_eval(step: int) -> dict:
        metrics = evaluate(model, step)
        model.train()
        return metrics

    return run_loop(cfg, accelerator, name, step_fn, finish, resume=resume, progress=progress,
                    evaluate=run_eval if evaluate is not None else None,
                    state=_CursorState(batches, cfg.run.grad_accum, len(loader)), postfix="train/loss")


class _CursorState:
    """A `DataCursor`'s position as the loop's state (checkpoints of earlier versions kept no position:
    it is then where `step` optimizer steps of `micro_steps` batches each end)."""

    def __init__(self, cursor: DataCursor, micro_steps: int, epoch_batches: int):
        self.cursor, self.micro_steps, self.epoch_batches = cursor, micro_steps, epoch_batches

    def state_dict(self) -> dict:
        return {"data": self.cursor.state()}

    def load_state_dict(self, state: dict) -> None:
        self.cursor.epoch, self.cursor.batch = resume_position(state, state["step"], self.micro_steps, self.epoch_batches)
        self.cursor._batches = None
