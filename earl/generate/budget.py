"""Length budgets of an edit: how many tokens a generation feeds, how many positions the backbone
takes, and the checks that refuse (or truncate) a prompt that does not fit, saying which part is
too long: the instruction, or the image."""

from __future__ import annotations

import torch

from earl.errors import EarlError
from earl.generate.sampling import SamplingConfig
from earl.layout import EditLayout


def decoding_capacity(layout: EditLayout, h: int, w: int, cfg: SamplingConfig, think: bool) -> int:
    """Tokens a generation can feed after its prompt: [<think> text </think>] header, h rows of w codes + <eol>."""
    thinking = len(layout.think_open()) + cfg.max_think_tokens if think else 0
    if think and layout.think_format != "tokens":  # a multi-token close is forced after the budget
        thinking += len(layout.think_close())
    return thinking + len(layout.header(h, w)) + h * (w + 1)


def context_limit(backbone) -> int | None:
    """The most positions the backbone takes (`max_position_embeddings`), or None if it names none."""
    cfg = backbone.config
    limit = getattr(cfg, "max_position_embeddings", None)
    if limit is None and getattr(cfg, "text_config", None) is not None:
        limit = getattr(cfg.text_config, "max_position_embeddings", None)
    return int(limit) if limit else None


def completion_length(layout: EditLayout, h: int, w: int, cfg: SamplingConfig, think: bool) -> int:
    """The longest completion of an h x w edit: what `decoding_capacity` feeds, then <eof> <eoi> <eos>."""
    return decoding_capacity(layout, h, w, cfg, think) + 3


def _fixed_tokens(layout: EditLayout, h: int, w: int, cfg: SamplingConfig, think: bool) -> int:
    """Tokens an h x w edit takes besides its instruction: <bos>, the source image and the completion."""
    return len(layout.prompt(None, torch.zeros(h, w, dtype=torch.long))) + completion_length(layout, h, w, cfg, think)


def instruction_budget(backbone, layout: EditLayout, h: int, w: int, cfg: SamplingConfig, think: bool,
                       pixels_per_code: int | None = None) -> int | None:
    """The most instruction tokens an h x w edit leaves room for: the context limit less <bos>, the source
    image's tokens and the completion (None: no limit known). An image that leaves no room for any
    instruction is refused (`image_too_large`): no truncation of the instruction can help it."""
    limit = context_limit(backbone)
    if limit is None:
        return None
    room = limit - _fixed_tokens(layout, h, w, cfg, think)
    if room < 1:
        raise image_too_large(layout, h, w, cfg, think, 1, limit, pixels_per_code)
    return room


def largest_grid(layout: EditLayout, h: int, w: int, cfg: SamplingConfig, think: bool, room: int) -> tuple[int, int] | None:
    """The largest code grid of about the shape h x w (the longer side shrunk one code at a time) whose
    edit fits in `room` positions, or None when not even one code does."""
    long, short = max(h, w), min(h, w)
    for side in range(long, 0, -1):
        other = max(1, round(short * side / long))
        grid = (side, other) if h >= w else (other, side)
        if _fixed_tokens(layout, *grid, cfg, think) <= room:
            return grid
    return None


def image_too_large(layout: EditLayout, h: int, w: int, cfg: SamplingConfig, think: bool, instruction_tokens: int,
                    limit: int, pixels_per_code: int | None) -> EarlError:
    """The error for an image whose tokens leave no room for the instruction: its size, what it takes, and
    the largest image of its shape that fits, as a code grid and in pixels (`pixels_per_code`: the image
    tokenizer's downsample factor; the code grid alone when it is not known)."""
    def size(gh, gw):
        px = f", {gh * pixels_per_code} x {gw * pixels_per_code} pixels" if pixels_per_code else ""
        return f"{gh} x {gw} codes{px} (height x width)"

    taken = _fixed_tokens(layout, h, w, cfg, think)
    fits = largest_grid(layout, h, w, cfg, think, limit - instruction_tokens)
    advice = ("no image fits beside this instruction" if fits is None else
              f"the largest image of this shape that fits beside this instruction is {size(*fits)}"
              + (f", an image area of at most {fits[0] * fits[1] * pixels_per_code ** 2} pixels" if pixels_per_code
                 else ""))
    return EarlError(
        f"the image is too large for the model: at {size(h, w)} the source image and the edit take {taken} tokens, "
        f"and the instruction {instruction_tokens} more, but the model takes at most {limit} tokens "
        f"(max_position_embeddings); {advice}: give a smaller image size (image_area or image_size)")


def check_prompt_lengths(backbone, layout: EditLayout, instructions: list[str], h: int, w: int,
                         cfg: SamplingConfig, think: bool, pixels_per_code: int | None = None) -> None:
    """Refuse (EarlError) an edit whose prompt and completion do not fit in the model's positions, naming
    the limit and the lengths in tokens, and what is too long: the image when it leaves no room for any
    instruction (`image_too_large`), else the instruction."""
    limit = context_limit(backbone)
    if limit is None:
        return
    fixed = len(layout.prompt(None, torch.zeros(h, w, dtype=torch.long)))
    completion = completion_length(layout, h, w, cfg, think)
    for i, ins in enumerate(instructions):
        n = len(layout.encode_text(ins))
        if fixed + n + completion <= limit:
            continue
        if fixed + completion >= limit:
            raise image_too_large(layout, h, w, cfg, think, n, limit, pixels_per_code)
        which = "the instruction" if len(instructions) == 1 else f"instruction {i + 1}"
        raise EarlError(
            f"{which} is too long for the model: the prompt is {fixed + n} tokens ({n} of them the "
            f"instruction) and the edit needs {completion} more, {fixed + n + completion} in all, but the "
            f"model takes at most {limit} tokens (max_position_embeddings), so an instruction may have at most "
            f"{limit - fixed - completion} tokens; shorten it, or ask for truncation "
            f"(EditPipeline(..., truncate_instruction=True), earl edit --truncate-instruction)")


def fit_instruction(layout: EditLayout, instruction: str, max_tokens: int) -> str:
    """The longest prefix of `instruction` (cut at a token boundary) that encodes to at most `max_tokens`."""
    if max_tokens <= 0:
        raise EarlError("no room for any instruction: the source image and the edit fill the model's positions")
    if len(layout.encode_text(instruction)) <= max_tokens:
        return instruction
    offsets = layout.tok(instruction, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    k = max_tokens
    while k > 0:
        cut = instruction[: offsets[k - 1][1]]
        if len(layout.encode_text(cut)) <= max_tokens:
            return cut
        k -= 1
    raise EarlError("the instruction cannot be truncated to fit the model's positions")

