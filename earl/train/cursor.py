"""The training data's position, kept so that a resumed run trains on the batches an uninterrupted one
would have reached: each epoch's shuffle is a function of the run seed and the epoch, and a
checkpoint records the epoch and the batch within it."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import Accelerator

from earl.data import encode_dataset, resolve_source
from earl.seeds import derive_seed

log = logging.getLogger(__name__)


def load_sources(accelerator: Accelerator, sources: list[str], image_tokenizer, tokenizer_dir: Path,
                 cache_dir: Path, image_size: int):
    """Resolve and encode data sources; the main rank generates/encodes first, the others read its cache."""
    with accelerator.main_process_first():
        return [encode_dataset(resolve_source(s, cache_dir, image_size), image_tokenizer, tokenizer_dir, cache_dir,
                               progress=accelerator.is_main_process) for s in sources]


def epoch_seed(seed: int, epoch: int) -> int:
    """The shuffling seed of one epoch, a function of (run seed, epoch) alone: a resumed run rebuilds
    the interrupted epoch's order from the two numbers instead of storing it."""
    return derive_seed("earl-data", seed, epoch, sep=":", bits=63, byteorder="little")


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


class CursorState:
    """A `DataCursor`'s position as the loop's state (checkpoints of earlier versions kept no position:
    it is then where `step` optimizer steps of `micro_steps` batches each end)."""

    def __init__(self, cursor: DataCursor, micro_steps: int, epoch_batches: int):
        self.cursor, self.micro_steps, self.epoch_batches = cursor, micro_steps, epoch_batches

    def state_dict(self) -> dict:
        return {"data": self.cursor.state()}

    def load_state_dict(self, state: dict) -> None:
        self.cursor.epoch, self.cursor.batch = resume_position(state, state["step"], self.micro_steps, self.epoch_batches)
        self.cursor._batches = None
