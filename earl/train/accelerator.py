"""The run's accelerator (precision, DeepSpeed, trackers) and the backbone's training-time switches, from a
recipe's `run` section (and `optim`, whose clipping a DeepSpeed JSON must not contradict)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DeepSpeedPlugin, ProjectConfiguration

from earl.errors import ConfigError
from earl.train.sections import OptimSection, RunSection, settle_grad_accum

log = logging.getLogger(__name__)


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
