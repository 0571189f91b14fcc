"""LoRA through peft: wrap a backbone from a recipe's `lora` section, save and resume its adapters, serve
the frozen reference a KL term needs, and merge adapters back into a full editor.

A LoRA run trains rank-r adapters on a frozen base. What it writes holds the adapters alone:

    adapter_model.safetensors   peft's adapter weights (and any `modules_to_save`)
    adapter_config.json         peft's LoraConfig
    adapter_base.json           the base the adapters belong to: its directory and the sha256 of its
                                backbone weights, so a merge into another base is refused

in each `checkpoints/step_N/` (beside accelerate's optimiser, scheduler and RNG state, instead of the
full weights) and as the run's `model/`. The base is the directory the run started from where it
trains that model as loaded (GRPO, GCPO, SFT from `model.init_from`); a run that builds or grows its
model first (SFT from scratch, the reward model's vocabulary grown by its judge words, the decomposer's
plan tokens) writes that start once to `out_dir/base/` and points there.

`earl checkpoint merge RUN_OR_CHECKPOINT --out DIR` (`merge_adapters`) folds the adapters into the
base and writes a full editor directory. A KL reference under LoRA is the base itself, reached by
peft's `disable_adapter()` (`reference_model`), as trl does: no second copy of the weights.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from peft.utils import CONFIG_NAME, SAFETENSORS_WEIGHTS_NAME
from safetensors.torch import load_file, save_file

from earl.checkpoint import sha256_file
from earl.errors import ConfigError, EarlError
from earl.io import atomic_directory, atomic_write_json, read_json
from earl.model import UnifiedEditor
from earl.train.sections import LoraSection

BASE_NAME = "adapter_base.json"  # the pointer to the base model, beside peft's two files
ADAPTER_FILES = (SAFETENSORS_WEIGHTS_NAME, CONFIG_NAME, BASE_NAME)


# ---- wrapping -----------------------------------------------------------------------------------
def module_suffixes(model: torch.nn.Module) -> list[str]:
    """The distinct last name parts of the model's linear and embedding layers (what LoRA can adapt)."""
    kinds = (torch.nn.Linear, torch.nn.Embedding)
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if name and isinstance(m, kinds)})


def lora_config(section: LoraSection, model: torch.nn.Module) -> LoraConfig:
    """peft's LoraConfig for `section`, once every pattern is known to match a module of `model`.

    peft itself only fails on a list that matches nothing, and late; a typo in one name of several
    would silently leave those layers frozen. So each pattern must match (the full name, or its last
    parts after a dot), and the error names the patterns and the names that exist."""
    names = [n for n, _ in model.named_modules() if n]
    for what, patterns in (("target_modules", section.target_modules), ("modules_to_save", section.modules_to_save)):
        missing = [p for p in patterns if not any(n == p or n.endswith("." + p) for n in names)]
        if missing:
            raise ConfigError(f"lora.{what}: {missing} match no module of the {type(model).__name__} backbone; its "
                              f"linear and embedding layers end in: {', '.join(module_suffixes(model))} "
                              f"(e.g. {next((n for n in names if n.endswith('proj')), names[-1])})")
    return LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                      target_modules=list(section.target_modules), modules_to_save=list(section.modules_to_save) or None,
                      bias="none", task_type="CAUSAL_LM")


def apply_lora(backbone: torch.nn.Module, section: LoraSection | None, base_dir: str | Path | None = None):
    """`backbone` wrapped with adapters from `section` (as it is where `section` is None). The backbone's
    own weights are frozen; `base_dir` is where the unwrapped base is saved, recorded in every adapter
    directory the run writes."""
    if section is None:
        return backbone
    model = get_peft_model(backbone, lora_config(section, backbone))
    model.earl_base_dir = str(Path(base_dir).resolve()) if base_dir is not None else None
    return model


def adapt(editor: UnifiedEditor, section: LoraSection | None, init_dir: Path | None, out_dir: str | Path,
          accelerator) -> None:
    """Give `editor.backbone` LoRA adapters from a recipe's `lora` section (nothing where it is None), before
    any training: the target names are checked first, then the base is settled (`start_base`: `init_dir`
    where the run trains the model loaded from it unchanged, None where it built or grew it)."""
    if section is None:
        return
    lora_config(section, editor.backbone)  # a bad name fails here, before anything is written
    base = start_base(editor, init_dir, Path(out_dir), accelerator.is_main_process)
    accelerator.wait_for_everyone()
    editor.backbone = apply_lora(editor.backbone, section, base)
    n = adapter_summary(editor.backbone)
    accelerator.print(f"LoRA r={section.r}: {n['trainable'] / 1e6:.3f}M of {n['total'] / 1e6:.2f}M parameters "
                      f"train ({100 * n['trainable'] / n['total']:.2f}%); base {base}")


def is_adapted(model) -> bool:
    return isinstance(model, PeftModel)


def start_base(editor: UnifiedEditor, init_dir: Path | None, out_dir: Path, is_main: bool) -> Path:
    """The directory of the model the adapters will belong to: `init_dir` where the run trains the model
    loaded from it as it is, else `out_dir/base`, written here (on the main process) if not there yet.
    A resumed run rebuilds the same start (a function of the recipe and seed), so the one written stays."""
    if init_dir is not None:
        return Path(init_dir)
    base = Path(out_dir) / "base"
    if is_main and not (base / "editor.json").is_file():
        editor.save_pretrained(base)
    return base


def backbone_fingerprint(editor_dir: Path) -> str:
    """sha256 over the backbone's weight files (name and content), the identity a merge checks."""
    files = sorted((Path(editor_dir) / "backbone").glob("*.safetensors"))
    if not files:
        raise EarlError(f"{editor_dir}: no backbone/*.safetensors (expected an earl editor directory as LoRA base)")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


# ---- saving and loading adapters ----------------------------------------------------------------
def write_adapters(model: PeftModel, directory: Path) -> None:
    """peft's adapter files and the base pointer into `directory` (which the caller makes atomic). The
    base's fingerprint is computed once per run (the first save) and kept on the model."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, save_embedding_layers=False)
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(directory / SAFETENSORS_WEIGHTS_NAME),
              metadata={"format": "pt"})
    model.peft_config["default"].save_pretrained(str(directory))
    base = getattr(model, "earl_base_dir", None)
    if base is not None and getattr(model, "earl_base_sha256", None) is None:
        model.earl_base_sha256 = backbone_fingerprint(Path(base))
    atomic_write_json(directory / BASE_NAME, {"base_model": base, "base_sha256": getattr(model, "earl_base_sha256", None)})


def read_adapters(model: PeftModel, directory: Path) -> None:
    """Load the adapter weights `write_adapters` wrote into `model` (whose adapters must have their shapes)."""
    file = Path(directory) / SAFETENSORS_WEIGHTS_NAME
    if not file.is_file():
        raise EarlError(f"{directory}: no {SAFETENSORS_WEIGHTS_NAME} (not a checkpoint of a LoRA run?)")
    result = set_peft_model_state_dict(model, load_file(str(file)))
    if result.unexpected_keys:
        raise EarlError(f"{file}: weights the model has no adapter for: {result.unexpected_keys[:5]}")


def save_model(editor: UnifiedEditor, backbone, path: Path) -> Path:
    """The run's final model at `path`: the full editor, or for a LoRA run its adapter directory."""
    if not is_adapted(backbone):
        editor.backbone = backbone
        return editor.save_pretrained(path)
    with atomic_directory(path) as tmp:
        write_adapters(backbone, tmp)
    return Path(path)


@contextlib.contextmanager
def adapter_checkpoints(accelerator):
    """While open, `accelerator.save_state` writes a LoRA model's adapters (`write_adapters`) instead of its
    full weights and `load_state` reads them back; a full model is saved as before.

    Under DeepSpeed the engine writes the model itself; `engine_state_kwargs` then leaves the frozen
    base out of its file, and the adapter files are written beside it all the same."""

    def adapted(models):
        return [i for i, m in enumerate(models) if is_adapted(accelerator.unwrap_model(m))]

    def on_save(models, weights, output_dir):
        found = adapted(models)
        if len(weights) == len(models):  # not DeepSpeed: the full state dicts accelerate is about to write
            for i in reversed(found):
                weights.pop(i)
        if len(found) > 1:
            raise EarlError("adapter checkpoints: one LoRA model per run is supported")
        if found and accelerator.is_main_process:
            write_adapters(accelerator.unwrap_model(models[found[0]]), Path(output_dir))

    def on_load(models, input_dir):
        for i in reversed(adapted(models)):
            read_adapters(accelerator.unwrap_model(models.pop(i)), Path(input_dir))

    handles = [accelerator.register_save_state_pre_hook(on_save), accelerator.register_load_state_pre_hook(on_load)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def engine_state_kwargs(accelerator, what: str) -> dict:
    """DeepSpeed's save/load arguments for a LoRA run (`what` "save" or "load"): its engine checkpoint
    keeps only the trainable weights, the frozen base coming from the base directory. {} otherwise."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return {}
    # accelerate keeps the prepared models only in this attribute; save_state/load_state read it the same way
    if not any(is_adapted(accelerator.unwrap_model(m)) for m in accelerator._models):
        return {}
    return {"exclude_frozen_parameters": True} if what == "save" else {"load_module_strict": False}


# ---- the frozen reference -----------------------------------------------------------------------
class AdaptersOff(torch.nn.Module):
    """The base model inside a LoRA model: a forward with the adapters disabled (peft's `disable_adapter()`)
    and in eval mode, as a deep-copied frozen reference would run; no weight is copied."""

    def __init__(self, model: PeftModel):
        super().__init__()
        object.__setattr__(self, "peft", model)  # not registered: the policy's weights stay the policy's

    def parameters(self, recurse: bool = True):
        return self.peft.parameters(recurse)

    def forward(self, *args, **kwargs):
        training = self.peft.training
        self.peft.eval()
        try:
            with self.peft.disable_adapter():
                return self.peft(*args, **kwargs)
        finally:
            self.peft.train(training)


def reference_model(backbone, beta: float):
    """The frozen start a KL term (weight `beta`) compares with: None where beta is 0; for a LoRA model the
    base seen with the adapters off; otherwise a frozen copy made now (before any update)."""
    if not beta > 0:
        return None
    if is_adapted(backbone):
        return AdaptersOff(backbone)
    return copy.deepcopy(backbone).requires_grad_(False).eval()


# ---- merging ------------------------------------------------------------------------------------
def find_adapters(source: str | Path) -> Path:
    """The adapter directory a merge reads: `source` itself (a checkpoint step or a run's model/), a run's
    model/, or else the run's newest checkpoint."""
    source = Path(source)
    if (source / CONFIG_NAME).is_file():
        return source
    if (source / "model" / CONFIG_NAME).is_file():
        return source / "model"
    steps = sorted(p for p in (source / "checkpoints").glob("step_*") if (p / CONFIG_NAME).is_file())
    if steps:
        return steps[-1]
    raise EarlError(f"{source}: no LoRA adapters found (expected {CONFIG_NAME} in it, in model/, or in "
                    "checkpoints/step_*/ of a run trained with a `lora:` section)")


def merge_adapters(source: str | Path, out: str | Path, base: str | Path | None = None) -> Path:
    """Fold the adapters found at `source` (`find_adapters`) into their base and write a full editor at `out`.

    `base` defaults to the directory the adapters record; a base whose backbone weights differ from the
    recorded one, or whose shapes do not fit the adapters, is an error naming both."""
    return merged_editor(find_adapters(source), base).save_pretrained(out)


def merged_editor(adapters: Path, base: str | Path | None = None) -> UnifiedEditor:
    """The base editor with the adapters in `adapters` merged into its backbone (in memory)."""
    record = read_json(adapters / BASE_NAME) if (adapters / BASE_NAME).is_file() else {}
    recorded = record.get("base_model")
    base_dir = Path(base) if base is not None else Path(recorded) if recorded else None
    if base_dir is None:
        raise EarlError(f"{adapters}: no base model recorded ({BASE_NAME}); give the base editor with --base")
    if not (base_dir / "editor.json").is_file():
        raise EarlError(f"{base_dir}: not an earl editor directory (the base of the adapters in {adapters})")
    if record.get("base_sha256") and backbone_fingerprint(base_dir) != record["base_sha256"]:
        raise EarlError(f"{adapters} were trained on the base {recorded}, whose backbone weights differ from those "
                        f"of {base_dir}; merge into the base they were trained on")
    editor = UnifiedEditor.from_pretrained(base_dir)
    try:
        model = PeftModel.from_pretrained(editor.backbone, str(adapters), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise EarlError(f"the adapters in {adapters} do not fit the base {base_dir} (recorded base: {recorded}): "
                        f"{first}") from None
    editor.backbone = model.merge_and_unload()
    return editor


def load_editor(path: str | Path) -> UnifiedEditor:
    """What a training run left at `path`: a full editor directory, or a LoRA run's adapter directory, merged
    into its base in memory (for readers that evaluate every run alike, such as the study)."""
    path = Path(path)
    if (path / CONFIG_NAME).is_file() and not (path / "editor.json").is_file():
        return merged_editor(path).eval()
    return UnifiedEditor.from_pretrained(path)


def adapter_summary(model) -> dict[str, int]:
    """Trainable and total parameter counts (the figures a LoRA run reports)."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": sum(p.numel() for p in model.parameters())}
