"""`earl.generate`: earl's own decoding, by concept.

- `sampling`: `SamplingConfig`, the logits steps (temperature, top-k, top-p) and the draw;
- `decoders`: the cache-carrying decoders (`open_decoder`, `choose_decoder`) and the caller-owned
  `DecodeCache`;
- `text`: the one text-decoding loop (`decode_text`), greedy or sampled row by row, which the reward
  model, the decomposer, GCPO's traces and the served reward model all run;
- `budget`: how many positions an edit needs, and the checks that say which part is too long;
- `edits`: the edit sampler (`sample_edits`), an image written token by token with CFG;
- `jacobi`: speculative Jacobi decoding of the image grid (`schedule="jacobi"`): greedy codes
  unchanged, several per forward.

The names below are the package's public surface: import them from `earl.generate`.
"""

from earl.generate.budget import (
    check_prompt_lengths,
    completion_length,
    context_limit,
    decoding_capacity,
    fit_instruction,
    instruction_budget,
)
from earl.generate.decoders import DECODERS, DecodeCache, cache_kwargs, choose_decoder, open_decoder
from earl.generate.edits import GenerationCost, GenerationOutput, sample_edits, thinking_vocab_mask
from earl.generate.jacobi import SCHEDULES
from earl.generate.sampling import Generators, SamplingConfig, process_logits, sample_from
from earl.generate.text import (
    TextOutput,
    TextSampling,
    TextStops,
    decode_text,
    draw,
    greedy_text,
    left_pad,
    sample_traces_watching,
)

__all__ = [
    "DECODERS", "SCHEDULES", "DecodeCache", "GenerationCost", "GenerationOutput", "Generators", "SamplingConfig", "TextOutput", "TextSampling",
    "TextStops", "cache_kwargs", "check_prompt_lengths", "choose_decoder", "completion_length", "context_limit",
    "decode_text", "decoding_capacity", "draw", "fit_instruction", "greedy_text", "instruction_budget", "left_pad",
    "open_decoder", "process_logits", "sample_edits", "sample_from", "sample_traces_watching", "thinking_vocab_mask",
]
