"""Every seed derived from names stays the integer it was: the call sites against their original formulas."""

import hashlib
import random

import pytest

from earl.agents.pipeline import attempt_seed
from earl.seeds import derive_seed, sample_seed
from earl.train.cursor import epoch_seed


# the formulas as each call site wrote them before `derive_seed`; these integers seed published runs
def old_sample_seed(seed, sample_id):
    return int.from_bytes(hashlib.sha256(f"{seed}\0{sample_id}".encode()).digest()[:8], "little") & (2**63 - 1)


def old_attempt_seed(seed, key, step, attempt):
    return int(hashlib.sha256(f"{seed}|{key}|{step}|{attempt}".encode()).hexdigest()[:15], 16)


def old_epoch_seed(seed, epoch):
    return int.from_bytes(hashlib.sha256(f"earl-data:{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


def old_principle_seed(sample_id, instruction):
    return int(hashlib.sha256(f"{sample_id}|{instruction}".encode()).hexdigest()[:8], 16)


def _names(rng, n):
    alphabet = "abc019_-|:\0 é😀"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(12))) for _ in range(n)]


def _ints(rng, n):
    return [rng.choice([0, 1, -1, 7, 2**31, 2**63 - 1]) if rng.random() < 0.3 else rng.randrange(-10**12, 10**12)
            for _ in range(n)]


def test_every_call_site_gives_the_integers_it_gave():
    rng = random.Random(0)
    n = 2000
    for seed, name, step, attempt in zip(_ints(rng, n), _names(rng, n), _ints(rng, n), _ints(rng, n)):
        assert sample_seed(seed, name) == old_sample_seed(seed, name)
        assert sample_seed(seed, step) == old_sample_seed(seed, step)  # integer sample ids
        assert attempt_seed(seed, name, step, attempt) == old_attempt_seed(seed, name, step, attempt)
        assert epoch_seed(seed, step) == old_epoch_seed(seed, step)
        new = derive_seed(name, name[::-1], sep="|", bits=32)  # the reward model's per-request principle seed
        assert new == old_principle_seed(name, name[::-1])


def test_the_verifier_derives_principle_seeds_as_before(monkeypatch):
    """The reward-model verifier's ShapesEdit principles are drawn with the same seed as before."""
    from earl.rrm import verifier as rrm_verifier
    from earl.verify.base import EditRequest

    seen = []
    monkeypatch.setattr(rrm_verifier, "scene_from_meta", lambda meta, key: key)
    monkeypatch.setattr(rrm_verifier, "shapes_points", lambda src, tgt, seed: seen.append(seed) or [])
    v = object.__new__(rrm_verifier.RRMVerifier)
    meta = {"id": "test-00017", "source_scene": "{}", "target_scene": "{}"}
    v.points_for(EditRequest(source=None, edited=None, instruction="make the red circle blue", meta=meta))
    assert seen == [old_principle_seed("test-00017", "make the red circle blue")]


def test_known_values_and_widths():
    assert sample_seed(0, "a") == old_sample_seed(0, "a") < 2**63
    assert attempt_seed(0, "a", 1, 2) < 2**60 and epoch_seed(3, 4) < 2**63
    assert derive_seed("x", sep="", bits=64) == int(hashlib.sha256(b"x").hexdigest()[:16], 16)
    with pytest.raises(ValueError, match="bits must be 1..64"):
        derive_seed("x", sep="", bits=65)
