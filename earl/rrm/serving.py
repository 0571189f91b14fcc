"""The reasoning reward model over HTTP: the engine behind `earl serve judge --model RRM_DIR`.

A training job (or several, sharing one server) asks for verdicts with an OpenAI chat request
(`earl.rrm.chat`: two images and a text part ending with the request as one JSON line). The engine
replies with the verdict text of `earl.rrm.trace`, which the client parses exactly as the in-process
verifier does (an unparseable reply is a failure, after retries). It decodes as the in-process
reward model does (`earl.generate.decode_text`), each row with its request's temperature, top_p,
seed, max_tokens and stop strings, so a seeded request gets the traces the same seed gives in process
(`earl.rrm.scoring.sample_verdicts` with `verdict_generators`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from earl.errors import DataError
from earl.generate import TextSampling, TextStops, context_limit, decode_text
from earl.model import UnifiedEditor
from earl.rrm.chat import unpack_request
from earl.rrm.prompt import judge_prompt, normalise_decoded
from earl.rrm.scoring import row_generator
from earl.verify.local_vlm import ChatRequest, Completion, check_fits, stop_at


def rrm_engine(model_dir: str, max_new_tokens: int = 320, device: str = "cpu"):
    """A `JudgeServer` engine: list[ChatRequest] -> list[Completion], one batched generation per call.

    Its `validate(request)` (which the server calls before queueing a request) does all the per-request
    work: it reads the request (`DataError` for one it cannot read), preprocesses both images and counts
    the prompt (`RequestTooLong` when prompt and reply budget exceed the backbone's
    `max_position_embeddings`), and leaves the result on `request.prepared`; a batch then only encodes
    the images and generates. Each row is greedy at temperature 0, else sampled with its own top_p and
    seeded generator; it stops at its own `max_tokens` (finish_reason "length"), at the end of its
    verdict or one of its stop strings ("stop"), or when its caller is gone; usage is counted in tokens."""
    editor = UnifiedEditor.from_pretrained(model_dir, device=device)
    layout = editor.layout
    limit = context_limit(editor.backbone)
    blank = torch.zeros(tuple(editor.config.grid), dtype=torch.long)  # the grid's token count, not its content

    def decode(ids: list[int]) -> str:
        return normalise_decoded(editor.text_tokenizer.decode(ids, skip_special_tokens=True))

    def validate(request: ChatRequest) -> None:
        src, edt, instruction, points = unpack_request(request.messages)
        try:
            prompt_tokens = len(judge_prompt(layout, instruction, points, blank, blank))
            images = [editor.preprocess(src)[0], editor.preprocess(edt)[0]]
        except (TypeError, ValueError, AttributeError) as e:
            raise DataError(f"cannot read the reward-model request ({type(e).__name__}: {e})") from None
        check_fits(prompt_tokens, min(max_new_tokens, request.max_tokens), limit)
        request.prepared = (images, instruction, points)

    @torch.no_grad()
    def engine(requests: list[ChatRequest]) -> list[Completion]:
        for r in requests:
            if r.prepared is None:
                validate(r)
        src = editor.encode_images([r.prepared[0][0] for r in requests])
        edt = editor.encode_images([r.prepared[0][1] for r in requests])
        seqs = [judge_prompt(layout, r.prepared[1], r.prepared[2], a.cpu(), b.cpu())
                for r, a, b in zip(requests, src, edt)]
        batch = {k: v.to(editor.device) for k, v in layout.pad_prompts(seqs).items()}
        stops = TextStops(layout.ids.eos, layout.ids.pad, [min(max_new_tokens, r.max_tokens) for r in requests],
                          stop_strings=[r.stop for r in requests] if any(r.stop for r in requests) else (),
                          decode=decode, cancel=[r.cancel for r in requests])
        sampling = TextSampling([r.temperature for r in requests], [r.top_p for r in requests],
                                [row_generator(r.seed, editor.device) for r in requests])
        got = decode_text(editor.backbone, batch, stops, sampling)
        return [_completion(r, len(seq), got.row(i), got.finished[i], layout.ids.eos, decode)
                for i, (r, seq) in enumerate(zip(requests, seqs))]

    engine.validate = validate
    return engine


def _completion(request: ChatRequest, prompt_tokens: int, ids: list[int], finished: bool, eos: int,
                decode) -> Completion:
    """One row's reply: its text up to its end of turn or first stop string, and what it cost in tokens."""
    at_eos = finished and bool(ids) and ids[-1] == eos
    kept = ids[:-1] if at_eos else ids
    text = decode(kept)
    cut = stop_at(text, request.stop)
    if cut is not None:
        return Completion(text[:cut], prompt_tokens, len(kept), "stop")
    return Completion(text, prompt_tokens, len(kept) + at_eos, "stop" if at_eos else "length")


def is_rrm_dir(path) -> bool:
    """An earl editor directory (editor.json): served by `rrm_engine`, not as a transformers VLM."""
    return (Path(path) / "editor.json").is_file()
