"""Train the VQ image tokenizer on ShapesEdit scenes: setup -> train -> evaluate -> save.

    from earl.config import load_config
    from earl.train.tokenizer import TokenizerRecipe, train_tokenizer, format_report
    report = train_tokenizer(load_config(TokenizerRecipe, "recipes/shapes/tokenizer.yaml"))
    print(format_report(report))

Data is a fixed set of `n_train` random scenes rendered once into a uint8 tensor (rendering is
cheap, and a fixed set makes runs and resumes reproducible); test scenes come from a separate
seed. The loss is L1 + L2 + the quantiser's auxiliary loss, plus two optional perceptual-free terms:
- a colour (foreground) term: pixels whose colour differs from the image's median colour, grown
  by `foreground_dilation` pixels so the background next to each edge counts too, get
  `1 + foreground_weight` times the weight. Objects cover ~10% of a ShapesEdit image and shape
  (circle vs square) lives in a few boundary pixels; without this term a tokenizer first learns
  the backgrounds, then draws every object as a coloured square for thousands of steps;
- an edge term: L1 between image gradients, which rewards crisp shape boundaries.

Training runs on the shared loop (`earl.train.loop.run_loop`), like the editor's trainers: a run
killed at any point and resumed (`--resume`) logs each step once and ends with the weights of a run
never stopped.

Outputs in `out_dir`:
    tokenizer/        the trained tokenizer (`VQTokenizer.from_pretrained` loads it)
    checkpoints/      resumable state (`earl.train.checkpoints.Checkpoints`): model, optimizer and RNGs
                      through accelerate, the batch generator, loss window and history in
                      `trainer_state.json`
    metrics.jsonl     train/* every `log_every` steps, eval/* at evaluations (`earl plot metrics`)
    logs/             the same scalars for TensorBoard
    recipe.json       the resolved recipe
    report.json       PSNR, codebook usage and perplexity, oracle agreement, timings
    recon_grid.png    a few test originals (top) above their reconstructions (bottom), upscaled
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

from earl.config import to_dict
from earl.errors import ConfigError
from earl.io import atomic_write_json, read_json, save_png
from earl.shapes.edits import random_scene
from earl.shapes.oracle import parse_scene
from earl.shapes.render import render_array
from earl.shapes.scene import Scene
from earl.train.accelerator import make_accelerator
from earl.train.checkpoints import Checkpoints
from earl.train.loop import run_loop
from earl.train.sections import OptimSection, RunSection, settle_grad_accum
from tokenizer import VQConfig, VQTokenizer


@dataclass
class DataConfig:
    n_train: int = field(default=10000, metadata={"help": "random scenes rendered once and sampled with replacement"})
    n_test: int = field(default=500, metadata={"help": "held-out scenes (different seed) for PSNR, usage and oracle"})
    seed: int = field(default=0, metadata={"help": "scene sampling seed (test scenes use a derived seed)"})
    image_size: int = field(default=64, metadata={"help": "image side in pixels; must be a multiple of the downsample"})
    grid: int = field(default=4, metadata={"help": "scene grid (grid x grid cells)"})

    def __post_init__(self):
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError(f"n_train and n_test must be >= 1, got {self.n_train} and {self.n_test}")


@dataclass
class TrainConfig:
    """The tokenizer's losses and training phases; steps, batch, seed and cadences are in `run`, the
    optimiser and its schedule in `optim`, as for every trainer."""

    l1_weight: float = field(default=1.0, metadata={"help": "weight of the pixel L1 loss"})
    l2_weight: float = field(default=1.0, metadata={"help": "weight of the pixel L2 loss"})
    foreground_weight: float = field(
        default=0.0, metadata={"help": "extra pixel-loss weight on pixels away from the image's median colour"}
    )
    foreground_dilation: int = field(
        default=2, metadata={"help": "grow the foreground mask by this many pixels (covers both sides of edges)"}
    )
    edge_weight: float = field(default=0.0, metadata={"help": "weight of L1 between image gradients (crisp edges)"})
    decoder_only_steps: int = field(
        default=0,
        metadata={
            "help": "the last N of `steps` freeze the encoder and quantiser and train only the decoder on fixed "
            "codes (codes near a bin edge keep trading places while the encoder trains, which teaches the decoder "
            "to blur between them)"
        },
    )
    separation_weight: float = field(
        default=0.0,
        metadata={
            "help": "fsq with encoder_kernel=1: hinge loss pushing distinct patches of the training images (drawn "
            "uniformly, `separation_patches` per step) at least `separation_margin` bins apart in the max over FSQ "
            "dimensions, so that they do not share a code; for domains like ShapesEdit whose images are built from "
            "a few hundred distinct patches, all of which must survive"
        },
    )
    separation_margin: float = field(default=1.0, metadata={"help": "margin of the separation loss, in FSQ bins"})
    separation_patches: int = field(
        default=512, metadata={"help": "distinct patches drawn per step for the separation loss"}
    )
    aux_weight: float = field(default=1.0, metadata={"help": "weight of the quantiser's auxiliary loss (vq / lfq)"})
    eval_batch_size: int = field(default=100, metadata={"help": "images per forward pass during evaluation"})
    num_threads: int = field(default=2, metadata={"help": "torch CPU threads (0 = leave torch's default)"})


@dataclass
class TokenizerRecipe:
    data: DataConfig = field(default_factory=DataConfig)
    model: VQConfig = field(default_factory=VQConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # run.seed seeds initialisation and batch sampling; eval_every: quick test-PSNR evaluations; one process
    run: RunSection = field(default_factory=lambda: RunSection(steps=1500, batch_size=32, log_every=25, eval_every=500,
                                                               save_every=500))
    # AdamW with its own betas and no weight decay; warm-up, then cosine to min_lr
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=2e-3, min_lr=1e-4, warmup_steps=50,
                                                                     weight_decay=0.0, betas=(0.9, 0.999)))
    out_dir: str = field(default="runs/tokenizer", metadata={"help": "where the tokenizer, logs and report go"})

    def __post_init__(self):
        settle_grad_accum(self.run, 1, "the tokenizer's one batch per step")
        if self.run.deepspeed or self.run.gradient_checkpointing:
            raise ValueError("run.deepspeed and run.gradient_checkpointing: the tokenizer trains small convs in one "
                             "process; leave them unset")
        if self.optim.schedule != "cosine":
            raise ValueError(f"optim.schedule: the tokenizer's schedule is cosine, got {self.optim.schedule!r}")
        if not 0 <= self.train.decoder_only_steps <= self.run.steps:
            raise ValueError(f"train.decoder_only_steps must lie in [0, run.steps={self.run.steps}], "
                             f"got {self.train.decoder_only_steps}")
        if self.train.separation_weight > 0 and (self.model.quantizer != "fsq" or self.model.encoder_kernel != 1):
            raise ValueError(
                "train.separation_weight needs model.quantizer=fsq and model.encoder_kernel=1 (patch-local codes), "
                f"got quantizer={self.model.quantizer}, encoder_kernel={self.model.encoder_kernel}"
            )
        if self.data.image_size % self.model.downsample:
            raise ValueError(
                f"data.image_size {self.data.image_size} is not a multiple of the model's downsample "
                f"{self.model.downsample}; change one of them"
            )


# ---------------------------------------------------------------------------------------------
# Data


def make_scenes(n: int, seed: int, image_size: int, grid: int) -> tuple[list[Scene], torch.Tensor]:
    """`n` random scenes (1-4 objects) and their renders as a uint8 tensor (n, 3, H, W)."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, image_size, grid) for _ in range(n)]
    images = np.stack([render_array(s) for s in scenes])  # (n, H, W, 3) uint8
    return scenes, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (n, 3, H, W)


def _to_float(images_u8: torch.Tensor) -> torch.Tensor:
    return images_u8.float().div_(255.0)  # (B, 3, H, W) in [0, 1]


# ---------------------------------------------------------------------------------------------
# Loss and schedule


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, tc: TrainConfig) -> tuple[torch.Tensor, dict]:
    """Weighted L1 + L2 (+ foreground, + edge) between (B,3,H,W) images; returns (loss, float stats)."""
    err = (recon - target).abs()  # (B, 3, H, W)
    weight = torch.ones_like(target[:, :1])  # (B, 1, H, W)
    if tc.foreground_weight > 0:
        median = target.flatten(2).median(dim=2).values[:, :, None, None]  # (B, 3, 1, 1): the background here
        away = ((target - median).abs().amax(dim=1, keepdim=True) > 0.02).float()  # (B, 1, H, W): > 5/255 off
        r = tc.foreground_dilation
        if r > 0:
            away = F.max_pool2d(away, 2 * r + 1, stride=1, padding=r)  # (B, 1, H, W), grown by r pixels
        weight = weight + tc.foreground_weight * away
    l1 = (weight * err).mean()
    l2 = (weight * err.square()).mean()
    loss = tc.l1_weight * l1 + tc.l2_weight * l2
    stats = {"l1": err.mean().item(), "l2": err.square().mean().item()}
    if tc.edge_weight > 0:
        dx = (recon.diff(dim=-1) - target.diff(dim=-1)).abs().mean()  # horizontal gradients
        dy = (recon.diff(dim=-2) - target.diff(dim=-2)).abs().mean()  # vertical gradients
        loss = loss + tc.edge_weight * (dx + dy)
        stats["edge"] = (dx + dy).item()
    return loss, stats


def distinct_patches(images_u8: torch.Tensor, patch: int) -> torch.Tensor:
    """Every distinct `patch` x `patch` tile of the code grid in (N, 3, H, W) uint8 images: (K, 3, patch, patch)."""
    tiles = rearrange(images_u8, "n c (h p) (w q) -> (n h w) (c p q)", p=patch, q=patch)
    return rearrange(torch.unique(tiles, dim=0), "k (c p q) -> k c p q", c=3, p=patch)


def separation_loss(model: VQTokenizer, bank_u8: torch.Tensor, tc: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Mean hinge relu(margin - max_d |b_i - b_j|) over pairs of distinct patches drawn from `bank_u8`.

    b are the FSQ bin coordinates of each patch's latent; two patches share a code exactly when every
    dimension rounds to the same level, so a max-distance of a bin or more keeps them apart. Patches
    are drawn uniformly from the distinct ones, so rare patches (a small circle's quarter in one
    colour pair) are pushed away from their look-alikes as often as common ones; with a batch of
    whole images two rare look-alikes almost never meet. Needs a patch-local encoder, so that a
    patch encoded on its own gets the code it gets inside an image.
    """
    k = min(tc.separation_patches, len(bank_u8))
    pick = torch.randperm(len(bank_u8), generator=gen)[:k]
    bounded = model.quantizer.bin_coordinates(model.encoder(_to_float(bank_u8[pick]) * 2 - 1))  # (k, 1, d)
    b = bounded.reshape(k, -1)  # (k, d)
    dist = (b[:, None, :] - b[None, :, :]).abs().amax(-1)  # (k, k)
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    hinge = torch.relu(tc.separation_margin - dist)[off_diagonal]
    # Averaged over the violating pairs only: they are a handful among k^2, and a plain mean would
    # shrink their gradient to nothing just as they become the ones that matter.
    return hinge.sum() / (hinge > 0).sum().clamp(min=1)


def lr_at(step: int, opt: OptimSection, steps: int) -> float:
    """Linear warmup to `opt.lr` over `opt.warmup_steps` (step 0 already at 1/warmup of it), then cosine
    decay to `opt.min_lr` at `steps`."""
    if step < opt.warmup_steps:
        return opt.lr * (step + 1) / opt.warmup_steps
    progress = min(1.0, (step - opt.warmup_steps) / max(1, steps - opt.warmup_steps))
    floor = opt.min_lr / opt.lr
    return opt.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


# ---------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def reconstruct(model: VQTokenizer, images_u8: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode + decode in batches -> (recon uint8 (N,3,H,W), codes (N,h,w))."""
    recons, codes = [], []
    for i in range(0, len(images_u8), batch_size):
        c = model.encode(_to_float(images_u8[i : i + batch_size]))  # (b, h, w)
        recons.append((model.decode(c) * 255).round().to(torch.uint8))  # (b, 3, H, W)
        codes.append(c)
    return torch.cat(recons), torch.cat(codes)


def psnr(recon_u8: torch.Tensor, target_u8: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of uint8 images (what a user sees after saving), capped at 100 for exact copies."""
    mse = (recon_u8.float() - target_u8.float()).div(255).pow(2).flatten(1).mean(1)  # (N,)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).clamp(max=100.0)


def code_stats(codes: torch.Tensor, codebook_size: int) -> dict:
    """Fraction of the codebook used and the perplexity exp(H) of the code histogram."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).float()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    used = int((counts > 0).sum())
    return {"codes_used": used, "codebook_usage": used / codebook_size, "code_perplexity": math.exp(entropy)}


def oracle_agreement(scenes: list[Scene], images_u8: torch.Tensor) -> tuple[float, str]:
    """Fraction of images the ShapesEdit oracle parses back to exactly their scene."""
    arrays = images_u8.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    hits = sum(parse_scene(a, image_size=s.image_size, grid=s.grid).scene == s for a, s in zip(arrays, scenes))
    return hits / len(scenes), "exact scene match by earl.shapes.oracle.parse_scene"


def evaluate(model: VQTokenizer, scenes: list[Scene], images_u8: torch.Tensor, batch_size: int, oracle: bool) -> dict:
    recon, codes = reconstruct(model, images_u8, batch_size)
    p = psnr(recon, images_u8)
    out = {"psnr_db": p.mean().item(), "psnr_db_min": p.min().item(), **code_stats(codes, model.codebook_size)}
    out["test_l1"] = (recon.float() - images_u8.float()).abs().mean().item() / 255
    if oracle:
        out["oracle_agreement"], out["oracle_note"] = oracle_agreement(scenes, recon)
        out["oracle_agreement_originals"], _ = oracle_agreement(scenes, images_u8)
    return out


def save_recon_grid(path: Path, originals_u8: torch.Tensor, recon_u8: torch.Tensor, scale: int = 4, pad: int = 2) -> None:
    """Originals in the top row, reconstructions below, each upscaled `scale`x (nearest) with gaps."""
    n, _, h, w = originals_u8.shape
    canvas = np.full((2 * h * scale + 3 * pad, n * (w * scale + pad) + pad, 3), 255, dtype=np.uint8)
    for row, batch in enumerate((originals_u8, recon_u8)):
        for i, img in enumerate(batch.permute(0, 2, 3, 1).numpy()):  # (H, W, 3)
            big = img.repeat(scale, axis=0).repeat(scale, axis=1)  # (H*s, W*s, 3)
            y, x = pad + row * (h * scale + pad), pad + i * (w * scale + pad)
            canvas[y : y + h * scale, x : x + w * scale] = big
    save_png(Image.fromarray(canvas), path)


# ---------------------------------------------------------------------------------------------
# Training state the accelerator does not checkpoint


class TrainState:
    """What a resumed run needs besides weights, optimizer and the global RNGs (which accelerate's
    checkpoint holds): the batch sampler's generator, the losses since the last log (the window whose
    mean is `train/loss`), `history` (figures for the report) and the training time so far.

    `state_dict()` is plain JSON (the generator state as hex), kept in the checkpoint's
    `trainer_state.json` by the shared loop."""

    def __init__(self, seed: int):
        self.batches = torch.Generator().manual_seed(seed)
        self.window: list[float] = []
        self.history: dict = {}
        self.train_seconds = 0.0
        self._since: float | None = time.time()  # the clock runs from here; None once stopped

    def seconds(self) -> float:
        return self.train_seconds + (time.time() - self._since if self._since is not None else 0.0)

    def stop_clock(self) -> None:
        self.train_seconds, self._since = self.seconds(), None

    def state_dict(self) -> dict:
        return {"batches": bytes(self.batches.get_state().tolist()).hex(), "window": list(self.window),
                "history": dict(self.history), "train_seconds": self.seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.batches.set_state(torch.tensor(list(bytes.fromhex(state["batches"])), dtype=torch.uint8))
        self.window, self.history = list(state["window"]), dict(state["history"])
        self.train_seconds, self._since = state["train_seconds"], time.time()


OLD_CKPT_DIR = "checkpoint"  # the format before the shared loop (state.json + safetensors): not resumable


def _check_resumable(out_dir: Path, cfg: TokenizerRecipe) -> None:
    """Refuse to resume what cannot be resumed: a checkpoint for a different model or data (instead of
    a silent restart or a mismatched model), or only a checkpoint in the old `checkpoint/` format."""
    last = Checkpoints(out_dir).latest()
    if last is None:
        old = out_dir / OLD_CKPT_DIR
        if (old / "state.json").is_file():
            raise ConfigError(
                f"{old}: a checkpoint in the tokenizer trainer's old format, which --resume cannot continue "
                f"(checkpoints now live in {out_dir / 'checkpoints'}); train again without --resume, "
                "or pick a new out_dir"
            )
        return
    path = last / "trainer_state.json"
    saved = read_json(path).get("recipe", {})
    for section in ("model", "data"):
        if saved.get(section) != json.loads(json.dumps(to_dict(getattr(cfg, section)))):
            raise ConfigError(
                f"{path}: the checkpoint was trained with a different {section} config; "
                f"resume with the same recipe, or pick a new out_dir (or resume=False) to start over"
            )


# ---------------------------------------------------------------------------------------------
# The recipe


def train_tokenizer(cfg: TokenizerRecipe, progress: bool = True, resume: bool = False) -> dict:
    """Train, evaluate and save a tokenizer; returns the report (also written to `out_dir/report.json`).

    Runs on the shared loop (`earl.train.loop.run_loop`, single process): with `resume=True` and a
    checkpoint in `out_dir/checkpoints`, training continues from its step exactly as a run never
    stopped (the model and data config must match); without a checkpoint it starts from scratch.
    """
    t_start = time.time()
    tc, dc, run, opt = cfg.train, cfg.data, cfg.run, cfg.optim
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    out_dir = Path(cfg.out_dir)
    if resume:
        _check_resumable(out_dir, cfg)
    accelerator = make_accelerator(run, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        atomic_write_json(out_dir / "recipe.json", to_dict(cfg))

    # -- setup
    _, train_u8 = make_scenes(dc.n_train, dc.seed, dc.image_size, dc.grid)  # (N, 3, H, W) uint8
    test_scenes, test_u8 = make_scenes(dc.n_test, dc.seed + 1_000_003, dc.image_size, dc.grid)
    quick = min(len(test_u8), 200)  # periodic evals use a slice of the test set
    bank_u8 = distinct_patches(train_u8, cfg.model.downsample) if tc.separation_weight > 0 else None  # (K, 3, d, d)
    torch.manual_seed(run.seed)
    net = VQTokenizer(cfg.model)
    decay, no_decay = [], []
    for p in net.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)  # no weight decay on norms and biases
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=opt.lr,
        betas=tuple(opt.betas),
    )
    # The tokenizer trains on the CPU (small convs), also where a GPU is present: the recipe's timings are
    # CPU timings, and a resumed run repeats an uninterrupted one to the bit there. Single process.
    model, optimizer = accelerator.prepare(net, optimizer, device_placement=[False, False])
    state = TrainState(run.seed)
    final_eval: dict = {}  # the full evaluation of the last step, once run

    def step_fn(step: int) -> dict:
        if "initial_test_l1" not in state.history:  # the untrained model, before the first step
            state.history["initial_test_l1"] = evaluate(net, test_scenes, test_u8[:quick], tc.eval_batch_size, False)["test_l1"]
        model.train()
        lr = lr_at(step - 1, opt, run.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        idx = torch.randint(len(train_u8), (run.batch_size,), generator=state.batches)
        x = _to_float(train_u8[idx])  # (B, 3, H, W)
        decoder_only = step > run.steps - tc.decoder_only_steps
        if decoder_only:
            recon, aux = net.decode_for_training(net.encode(x)), x.new_zeros(())  # encode: no grad, eval mode
        else:
            recon, _, aux = model(x)
        rec_loss, stats = reconstruction_loss(recon, x, tc)
        loss = rec_loss + tc.aux_weight * aux
        if tc.separation_weight > 0 and not decoder_only:
            sep = separation_loss(net, bank_u8, tc, state.batches)
            stats["separation"] = sep.item()
            loss = loss + tc.separation_weight * sep
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if opt.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), opt.grad_clip)
        optimizer.step()
        state.window.append(loss.item())
        if step % run.log_every and step != run.steps:
            return {}
        state.history["last_train_loss"] = sum(state.window) / len(state.window)
        state.window = []
        return {"train/loss": state.history["last_train_loss"], "train/aux": aux.item(), "train/lr": lr,
                **{f"train/{k}": v for k, v in stats.items()}}

    def run_eval(step: int) -> dict:
        """A quick evaluation (a slice of the test set) every `eval_every` steps; at the last step the
        full one that the report gives, logged here, before the final checkpoint, so that a run resumed
        from that checkpoint does not log it a second time."""
        if step == run.steps:
            state.stop_clock()
            final_eval.update(evaluate(net, test_scenes, test_u8, tc.eval_batch_size, True))
            ev = final_eval
        else:
            ev = evaluate(net, test_scenes, test_u8[:quick], tc.eval_batch_size, False)
        model.train()
        return {f"eval/{k}": ev[k] for k in ("psnr_db", "codebook_usage")}

    def finish(metrics: dict, step: int, t0: float, log) -> dict:
        """The report: the full evaluation (run again where the run resumed from its last checkpoint),
        the tokenizer, the reconstruction grid."""
        state.stop_clock()
        log.close()
        net.eval()
        ev = final_eval or evaluate(net, test_scenes, test_u8, tc.eval_batch_size, True)
        if not accelerator.is_main_process:
            return {}
        tok_dir = net.save_pretrained(out_dir / "tokenizer")
        n_show = min(8, len(test_u8))
        save_recon_grid(out_dir / "recon_grid.png", test_u8[:n_show], reconstruct(net, test_u8[:n_show], n_show)[0])
        weights_mb = (tok_dir / "model.safetensors").stat().st_size / 2**20
        report = {
            **ev,
            "n_test": len(test_u8),
            "codebook_size": net.codebook_size,
            "grid": [dc.image_size // net.downsample] * 2,
            "quantizer": cfg.model.quantizer,
            "num_parameters": net.num_parameters(),
            "weights_mb": round(weights_mb, 3),
            "steps": step,
            "train_seconds": round(state.train_seconds, 1),
            "total_seconds": round(time.time() - t_start, 1),
            "initial_test_l1": state.history.get("initial_test_l1"),
            "last_train_loss": state.history.get("last_train_loss"),
            "tokenizer_dir": str(tok_dir),
        }
        atomic_write_json(out_dir / "report.json", report)
        return report

    return run_loop(cfg, accelerator, "tokenizer", step_fn, finish, resume=resume, progress=progress,
                    evaluate=run_eval, state=state, postfix="train/loss")


def format_report(report: dict) -> str:
    """A few human-readable lines summarising `report`."""
    agree = report.get("oracle_agreement")
    agree_s = "n/a (" + report.get("oracle_note", "no oracle") + ")" if agree is None else f"{agree:.1%}"
    lines = [
        f"tokenizer     {report['quantizer']}, {report['codebook_size']} codes, grid {report['grid'][0]}x{report['grid'][1]}, "
        f"{report['num_parameters'] / 1e6:.2f}M params ({report['weights_mb']:.1f} MB)",
        f"PSNR          {report['psnr_db']:.2f} dB mean, {report['psnr_db_min']:.2f} dB worst ({report['n_test']} test scenes)",
        f"codebook      {report['codes_used']} used ({report['codebook_usage']:.1%}), perplexity {report['code_perplexity']:.1f}",
        f"oracle        {agree_s}",
        f"training      {report['steps']} steps in {report['train_seconds']:.0f} s (total {report['total_seconds']:.0f} s)",
        f"saved         {report['tokenizer_dir']}",
    ]
    return "\n".join(lines)

