"""Supervised fine-tuning of the editor: `earl train sft recipes/shapes/sft.yaml`.

setup -> train -> save, on accelerate, so the same script runs on one CPU, under
`accelerate launch`/torchrun with several processes, and with a DeepSpeed ZeRO config.
Plain SFT learns `instruction + source -> target`; with `model.cot: true` the ground-truth
reasoning trace is written between <think> ... </think> before the target image, and the loss
covers it too. Only the completion carries loss (the prompt is masked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from earl.config import to_dict
from earl.data import EncodedEdits
from earl.errors import ConfigError
from earl.evaluate import oracle_eval
from earl.generate import SamplingConfig
from earl.hub import resolve_model
from earl.io import atomic_write_json
from earl.model import UnifiedEditor
from earl.shapes.edits import make_sample
from earl.shards import ShardedEdits, tokenizer_fingerprint
from earl.text import build_word_tokenizer
from earl.train.accelerator import make_accelerator, world_size
from earl.train.cursor import load_sources
from earl.train.lm import train_lm
from earl.train.lora import adapt
from earl.train.sections import LoraSection, OptimSection, RunSection
from tokenizer.vq import VQTokenizer


@dataclass
class ModelSection:
    size: str = "shapes-tiny"  # a named builder in earl.model.BACKBONE_SIZES
    image_tokenizer: str = "runs/tokenizer/tokenizer"  # directory written by `earl train tokenizer`
    init_from: str | None = None  # continue from a saved editor directory instead of a fresh backbone
    image_size: int = 64
    cot: bool = False  # write the reasoning trace before the target image


@dataclass
class DataSection:
    train: list[str] = field(default_factory=lambda: ["shapes:simple:train:20000:0"])
    eval: str | None = "shapes:simple:test:200"  # held-out set for eval loss and oracle metrics
    cache_dir: str = "runs/cache"  # generated datasets and code caches
    oracle_eval_samples: int = 64  # edits generated and judged at each evaluation (0 = off)


@dataclass
class SFTRecipe:
    out_dir: str
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    eval_sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(temperature=0.0))
    lora: LoraSection | None = None  # train LoRA adapters on a frozen backbone (earl.train.lora); null: every weight


class EditExamples(Dataset):
    """Token sequences built on the fly from cached code grids (cheap: no pixels involved)."""

    def __init__(self, data: EncodedEdits, layout, cot: bool):
        self.data, self.layout, self.cot = data, layout, cot

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        d = self.data
        thinking = d.reasoning[i] if self.cot else None
        return self.layout.example(d.instructions[i], d.source_codes[i], d.target_codes[i], thinking)


class ShardExamples(Dataset):
    """Token sequences from pre-tokenised shards (`earl data tokenize`); grids may differ per item."""

    def __init__(self, shards, layout, cot: bool):
        self.shards, self.layout, self.cot = shards, layout, cot

    def __len__(self):
        return len(self.shards)

    def __getitem__(self, i):
        r = self.shards[i]
        return self.layout.example(r["instruction"], r["source_codes"], r["target_codes"],
                                   r["reasoning"] if self.cot else None)


def split_weight(source: str) -> tuple[str, float | None]:
    """`SOURCE@W` -> (SOURCE, W): W is the source's share of the training draws (mixing coefficient)."""
    if "@" not in source:
        return source, None
    name, w = source.rsplit("@", 1)
    try:
        weight = float(w)
    except ValueError:
        raise ConfigError(f"data source {source!r}: the part after '@' must be a mixing weight, e.g. @0.5") from None
    if not weight > 0:
        raise ConfigError(f"data source {source!r}: the mixing weight must be > 0")
    return name, weight


def mixture_sampler(lengths: list[int], weights: list[float | None], seed: int):
    """Draws source k with probability w_k / sum(w) (uniformly within it); None when no weight was given."""
    if all(w is None for w in weights):
        return None
    if any(w is None for w in weights):
        raise ConfigError("data.train: give a mixing weight (@W) to every source or to none")
    per_item = torch.cat([torch.full((n,), w / n, dtype=torch.double) for n, w in zip(lengths, weights)])
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.WeightedRandomSampler(per_item, num_samples=sum(lengths), replacement=True, generator=g)


# ---- setup ------------------------------------------------------------------------------------
def _build_text_tokenizer(data: list[EncodedEdits]):
    """Word-level tokenizer over the training texts plus a fixed draw of ShapesEdit texts (full vocabulary)."""
    import random

    rng = random.Random(1234)
    extra = [t for _ in range(3000) for s in [make_sample(rng, rng.choice(["simple", "complex"]))]
             for t in (s.instruction, s.reasoning)]
    corpus = [t for d in data for t in d.instructions + d.reasoning] + extra
    return build_word_tokenizer(corpus)


def setup(cfg: SFTRecipe, accelerator):
    out = Path(cfg.out_dir)
    cache = Path(cfg.data.cache_dir)
    if cfg.model.init_from:
        init = resolve_model(cfg.model.init_from, what="model.init_from")  # a directory or a Hub id
        editor = UnifiedEditor.from_pretrained(init)
        if editor.config.cot != cfg.model.cot:
            raise ConfigError(f"model.cot={cfg.model.cot} but {cfg.model.init_from} was trained with cot="
                              f"{editor.config.cot}")
        tok_dir = init / "image_tokenizer"
        image_tokenizer = editor.image_tokenizer
    else:
        tok_dir = Path(cfg.model.image_tokenizer)
        if not tok_dir.is_dir():
            raise ConfigError(f"model.image_tokenizer: {tok_dir} not found; train one with "
                              "`earl train tokenizer recipes/shapes/tokenizer.yaml`")
        image_tokenizer = VQTokenizer.from_pretrained(tok_dir)

    def load_all(sources):
        return load_sources(accelerator, sources, image_tokenizer, tok_dir, cache, cfg.model.image_size)

    if not cfg.data.train:
        raise ConfigError("data.train: at least one data source is needed")

    sources = [split_weight(s) for s in cfg.data.train]
    # each source: ShapesEdit data and dataset directories encoded through the code cache, or the shards
    # of `earl data tokenize` ("tokenized:DIR"), read lazily
    parts = [ShardedEdits(name.removeprefix("tokenized:")) if name.startswith("tokenized:") else load_all([name])[0]
             for name, _ in sources]
    encoded = [p for p in parts if isinstance(p, EncodedEdits)]
    evalset = load_all([cfg.data.eval])[0] if cfg.data.eval else None
    if cfg.model.cot and not all(r for p in parts for r in
                                 (p.reasoning if isinstance(p, EncodedEdits) else p.texts("reasoning"))):
        raise ConfigError("model.cot is true but some training samples have no reasoning trace")
    if not cfg.model.init_from:
        editor = UnifiedEditor.build(cfg.model.size, image_tokenizer, _build_text_tokenizer(encoded),
                                     cfg.model.image_size, cot=cfg.model.cot, seed=cfg.run.seed)
    if any(isinstance(p, ShardedEdits) for p in parts) and not cfg.model.init_from:
        raise ConfigError("data.train: tokenized sources need model.init_from (the editor whose image tokenizer "
                          "made the shards, e.g. an Emu3 checkpoint)")

    for (name, _), p in zip(sources, parts):
        if isinstance(p, ShardedEdits) and p.manifest["tokenizer"] != tokenizer_fingerprint(editor):
            raise ConfigError(f"data source {name}: its shards were made by another image tokenizer than "
                              f"{cfg.model.init_from}'s; tokenize the data with this model")
    datasets = [EditExamples(p, editor.layout, cfg.model.cot) if isinstance(p, EncodedEdits)
                else ShardExamples(p, editor.layout, cfg.model.cot) for p in parts]
    train = torch.utils.data.ConcatDataset(datasets)
    train.sampler = mixture_sampler([len(d) for d in datasets], [w for _, w in sources], cfg.run.seed)
    out.mkdir(parents=True, exist_ok=True)
    return editor, train, evalset


# ---- train ------------------------------------------------------------------------------------
def train_sft(cfg: SFTRecipe, resume: bool = False, progress: bool = True) -> dict:
    """Run the recipe; returns the final metrics (also written to out_dir/final_metrics.json)."""
    from accelerate.utils import set_seed

    out = Path(cfg.out_dir)
    accelerator = make_accelerator(cfg.run, out, cfg.optim)
    set_seed(cfg.run.seed)
    editor, train, evalset = setup(cfg, accelerator)
    init = resolve_model(cfg.model.init_from, what="model.init_from") if cfg.model.init_from else None
    adapt(editor, cfg.lora, init, out, accelerator)
    layout = editor.layout
    if accelerator.is_main_process:
        atomic_write_json(out / "recipe.json", to_dict(cfg))

    loader = DataLoader(train, batch_size=cfg.run.batch_size, shuffle=train.sampler is None, sampler=train.sampler,
                        drop_last=len(train) >= cfg.run.batch_size, collate_fn=layout.collate)
    accelerator.print(f"SFT: {len(train)} examples, world size {world_size(accelerator)}, "
                      f"{sum(p.numel() for p in editor.backbone.parameters()) / 1e6:.2f}M parameters")
    return train_lm(cfg, accelerator, editor, loader, "sft", resume, progress,
                    lambda model, step: evaluate(cfg, accelerator, model, editor, evalset, step))


def rank_batches(n: int, batch_size: int, rank: int, world: int) -> list[range]:
    """This rank's share of `n` examples in batches: batch b goes to rank b % world. Each rank gets the
    same number of entries (the longest share's); an entry past the end of the set is an empty range."""
    starts = list(range(0, n, batch_size))
    rounds = -(-len(starts) // world)
    return [range(starts[b], min(starts[b] + batch_size, n)) if b < len(starts) else range(0)
            for b in (rank + r * world for r in range(rounds))]


@torch.no_grad()
def held_out_loss(accelerator, model, ds, collate, batch_size: int) -> float:
    """Teacher-forced loss over every labelled token of `ds`, the examples split over the ranks.

    Runs on the unwrapped model: the DDP wrapper's forward broadcasts buffers, a collective a rank
    with fewer (or no) batches never joins, so an uneven split (8 examples, batch 8, 2 ranks) hung.
    Every rank still runs the same number of forwards (one with weight 0 on the set's first batch
    where its share has ended), since a ZeRO-3 forward gathers parameters from all ranks. Each rank
    sums loss x tokens and counts tokens; one all-reduce of the two sums makes the mean a mean over
    tokens, so a short rank weighs what its tokens weigh."""
    net = accelerator.unwrap_model(model)
    totals = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # (sum of loss x tokens, tokens)
    for rows in rank_batches(len(ds), batch_size, accelerator.process_index, accelerator.num_processes):
        batch = collate([ds[i] for i in (rows or range(min(batch_size, len(ds))))])
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        tokens = (batch["labels"][:, 1:] != -100).sum() * bool(rows)
        totals += torch.stack([net(**batch).loss.double() * tokens, tokens.double()])
    loss_sum, tokens = accelerator.reduce(totals, reduction="sum").tolist()
    return loss_sum / max(tokens, 1.0)


@torch.no_grad()
def evaluate(cfg: SFTRecipe, accelerator, model, editor, evalset: EncodedEdits | None, step: int) -> dict:
    """Teacher-forced loss on the held-out set (all ranks), then oracle metrics on generated edits (main rank)."""
    if evalset is None:
        return {}

    model.eval()
    ds = EditExamples(evalset, editor.layout, cfg.model.cot)
    metrics = {"eval/loss": held_out_loss(accelerator, model, ds, editor.layout.collate, cfg.run.batch_size)}
    if accelerator.is_main_process:
        editor.backbone = accelerator.unwrap_model(model)
        oracle = oracle_eval(editor, evalset, cfg.data.oracle_eval_samples, cfg.eval_sampling)
        metrics.update({f"eval/{k}": v for k, v in oracle.items()})
    return metrics
