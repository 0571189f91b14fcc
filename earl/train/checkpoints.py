"""Atomic, resumable training checkpoints.

`out_dir/checkpoints/step_0000100/` holds `accelerator.save_state` (model weights in safetensors;
optimizer, scheduler and RNG states - Python, NumPy, torch CPU and CUDA - loaded back with
`weights_only=True`) plus `trainer_state.json` (the step and what the trainer keeps besides, such as
the data position). A LoRA run's checkpoint holds its adapters instead of the full weights
(`earl.train.lora.adapter_checkpoints`). Each is written to a temporary directory and renamed into place, so a crash
mid-save leaves the previous checkpoint intact; `--resume` continues from the newest.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import load as accelerate_load

from earl.io import atomic_write_json
from earl.train.lora import adapter_checkpoints, engine_state_kwargs


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
        with adapter_checkpoints(accelerator):
            accelerator.save_state(str(tmp), safe_serialization=True, **engine_state_kwargs(accelerator, "save"))
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
        with adapter_checkpoints(accelerator):
            accelerator.load_state(str(path), **engine_state_kwargs(accelerator, "load"))
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
