"""`earl eval shapes` is resumable: at temperature > 0 a run that was interrupted and resumed writes
the same images, byte for byte, as one that ran through (each sample's randomness comes from its id)."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

import earl.io
from earl.evaluate import run_shapes_eval
from earl.generate import SamplingConfig
from earl.pipeline import EditPipeline, default_checkpoint
from earl.seeds import sample_seed
from earl.shapes.dataset import write_dataset

SAMPLING = SamplingConfig(temperature=1.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), split="simple", n=12, seed=0, part="test", progress=False)


@pytest.fixture(scope="module")
def editor():
    return EditPipeline.from_pretrained().editor


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data, editor):
    out = tmp_path_factory.mktemp("full")
    run_shapes_eval(default_checkpoint(), data, out, SAMPLING, batch_size=4, seed=3, progress=False, editor=editor)
    return images(out)


def images(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "images").glob("*.png"))}


def test_sample_seed_is_stable_and_distinct():
    assert sample_seed(0, "simple-test-00001") == sample_seed(0, "simple-test-00001")
    assert len({sample_seed(s, f"id{i}") for s in range(3) for i in range(50)}) == 150
    assert sample_seed(0, "a") == 0x73DCD9DAC8A01A5F  # fixed across processes and versions (no hash())


def test_interrupted_and_resumed_run_writes_the_same_images(tmp_path, data, editor, uninterrupted, monkeypatch):
    assert len(uninterrupted) == 12
    saved = []
    real_save = earl.io.save_png

    def save_then_die(image, path):
        real_save(image, path)
        if "images" in str(path):
            saved.append(path)
            if len(saved) == 5:  # killed in the middle of the second batch
                raise KeyboardInterrupt

    monkeypatch.setattr(earl.io, "save_png", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_shapes_eval(default_checkpoint(), data, tmp_path, SAMPLING, batch_size=4, seed=3, progress=False,
                        editor=editor)
    monkeypatch.setattr(earl.io, "save_png", real_save)
    assert len(images(tmp_path)) == 5
    run_shapes_eval(default_checkpoint(), data, tmp_path, SAMPLING, batch_size=4, seed=3, progress=False,
                    editor=editor)
    assert images(tmp_path) == uninterrupted


def test_any_missing_subset_and_batch_size_regenerate_the_same_images(tmp_path, data, editor, uninterrupted):
    (tmp_path / "images").mkdir()
    keep = random.Random(0).sample(sorted(uninterrupted), 5)
    for name in keep:
        (tmp_path / "images" / name).write_bytes(uninterrupted[name])
    run_shapes_eval(default_checkpoint(), data, tmp_path, SAMPLING, batch_size=3, seed=3, progress=False,
                    editor=editor)
    assert images(tmp_path) == uninterrupted


def test_the_seed_changes_the_images_and_greedy_ignores_it(tmp_path, data, editor, uninterrupted):
    run_shapes_eval(default_checkpoint(), data, tmp_path / "s4", SAMPLING, batch_size=4, seed=4, progress=False,
                    editor=editor)
    assert images(tmp_path / "s4") != uninterrupted
    greedy = SamplingConfig(temperature=0.0)
    for seed, bs in ((0, 4), (7, 5)):
        run_shapes_eval(default_checkpoint(), data, tmp_path / f"g{seed}", greedy, batch_size=bs, seed=seed,
                        progress=False, editor=editor)
    assert images(tmp_path / "g0") == images(tmp_path / "g7")


@pytest.mark.slow
def test_kill_9_and_resume_gives_the_uninterrupted_images(tmp_path, data, uninterrupted):
    """A real `earl eval shapes` process killed with SIGKILL at a random point after its first images,
    then resumed; the killed run, the resumed one and the reference each batch differently (2, 5, 4)."""
    out = tmp_path / "eval"

    def cmd(batch_size):
        return [sys.executable, "-m", "earl.cli", "eval", "shapes", "--model", str(default_checkpoint()), "--data",
                str(data), "--out", str(out), "--batch-size", str(batch_size), "--temperature", "1", "--seed", "3"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd(2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "images").glob("*.png")):
            assert proc.poll() is None, "the run ended before it wrote an image"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(random.uniform(0.0, 0.2))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done = images(out)
    assert 0 < len(done) <= 12
    print(f"killed after {len(done)} of 12 images")
    for name, content in done.items():  # what the killed run left is complete and already final
        assert content == uninterrupted[name], name
    r = subprocess.run(cmd(5), capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert images(out) == uninterrupted
