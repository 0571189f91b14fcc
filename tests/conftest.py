"""Shared fixtures: tiny models that tests build themselves (nothing is downloaded)."""

from __future__ import annotations

import os

import pytest
import torch

# Without a GPU the Triton kernels run under Triton's interpreter. It must be chosen before triton
# compiles (decorates) any kernel, so it is set here, before any test module imports earl.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests never download: a model reference that is not a local directory is looked up in the Hub cache only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tiny test models gain nothing from several threads, and on a busy 2-core machine threads fight
# each other (a small matmul was seen to go from 0.1 ms to 9 ms): one thread keeps tests steady.
torch.set_num_threads(1)



def pytest_collection_modifyitems(config, items):
    """GPU tests run only when a -m expression names them (`-m gpu`, as recipes/gpu/checks.sh runs
    them): a contributor's own -m, such as `-m "not slow"`, replaces addopts' `-m 'not gpu'` and would
    otherwise select them on a machine without CUDA."""
    if "gpu" in (config.getoption("markexpr") or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


WORDS = ["make the red circle blue .", "change the square to green", "remove the small triangle",
         "operation : recolour . target : the red circle at row 1 , column 2 ."]


@pytest.fixture(scope="session")
def text_tokenizer():
    from earl.text import build_word_tokenizer

    return build_word_tokenizer(WORDS)


@pytest.fixture(scope="session")
def vq_tokenizer():
    """An untrained, small VQ tokenizer (×8, FSQ): enough for shapes and plumbing tests."""
    from tokenizer import VQConfig, VQTokenizer

    torch.manual_seed(0)
    return VQTokenizer(VQConfig(channels=16, channel_mult=(1, 2, 2, 2), latent_dim=4, norm_groups=4,
                                quantizer="fsq", fsq_levels=(4, 4, 4))).eval()


@pytest.fixture
def tok_dir(tmp_path, vq_tokenizer):
    """The tiny VQ tokenizer saved to a directory, as recipes name one (`model.image_tokenizer`)."""
    vq_tokenizer.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


@pytest.fixture(scope="session")
def tiny_editor(vq_tokenizer, text_tokenizer):
    from earl.model import UnifiedEditor

    return UnifiedEditor.build("shapes-test", vq_tokenizer, text_tokenizer, image_size=32, seed=0).eval()


@pytest.fixture(scope="session")
def tiny_cot_editor(vq_tokenizer, text_tokenizer):
    from earl.model import UnifiedEditor

    return UnifiedEditor.build("shapes-test", vq_tokenizer, text_tokenizer, image_size=32, cot=True, seed=1).eval()
