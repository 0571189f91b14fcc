"""Seeds derived from names: a stable hash of a few parts, the same in every process and on every platform.

Python's `hash()` of a string changes per process, so a seed that must be reproduced elsewhere (a
resumed run, another rank, a served request) is taken from sha256 instead:

    text   = sep.join(parts)                                   e.g. "0|shape-17|2|1"
    x      = first 8 bytes of sha256(text.encode()), read in `byteorder`     (64 bits)
    seed   = x >> (64 - bits)   (keep="high")    or    x & (2**bits - 1)   (keep="low")

Each caller fixes its separator, width, byte order and end once; changing any of them changes every
seed it has ever drawn (and so every sampled number reported with it).
"""

from __future__ import annotations

import hashlib
from typing import Literal


def derive_seed(*parts, sep: str, bits: int, byteorder: Literal["big", "little"] = "big",
                keep: Literal["high", "low"] = "high") -> int:
    """A `bits`-bit seed (1..64) from `parts` joined by `sep` (each formatted as an f-string would)."""
    if not 1 <= bits <= 64:
        raise ValueError(f"derive_seed: bits must be 1..64, got {bits}")
    text = sep.join(format(p, "") for p in parts)
    x = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], byteorder)
    return x >> (64 - bits) if keep == "high" else x & ((1 << bits) - 1)


def sample_seed(seed: int, sample_id) -> int:
    """A 63-bit seed for one sample: a stable hash of (seed, sample id), the same in every process."""
    return derive_seed(seed, sample_id, sep="\0", bits=63, byteorder="little", keep="low")
