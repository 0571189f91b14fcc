import io
import os
import stat

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from earl.errors import DataError
from earl.io import (
    atomic_directory,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    load_dataset_image,
    load_image,
    read_json,
    save_png,
)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "r.json"
    atomic_write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_atomic_directory_swaps_in_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as d:
        (d / "a.txt").write_text("v1")
    assert (target / "a.txt").read_text() == "v1"
    with pytest.raises(RuntimeError), atomic_directory(target) as d:
        (d / "a.txt").write_text("half")
        raise RuntimeError("crash while writing")
    assert (target / "a.txt").read_text() == "v1"  # the old directory survives a failed write
    with atomic_directory(target) as d:
        (d / "b.txt").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or .old left behind


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it after."""
    before = os.umask(0o022)
    os.umask(before)
    yield os.umask
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writers_give_the_usual_permissions(tmp_path, umask, mask):
    """Files get 0666 & ~umask and directories 0777 & ~umask, as `open`/`mkdir` would give them,
    not the 0600/0700 of a `tempfile.mkstemp`/`mkdtemp` staging file."""
    umask(mask)
    writers = {
        "b.bin": lambda p: atomic_write_bytes(p, b"x"),
        "t.txt": lambda p: atomic_write_text(p, "x"),
        "j.json": lambda p: atomic_write_json(p, {"a": 1}),
        "i.png": lambda p: save_png(Image.new("RGB", (2, 2)), p),
    }
    for name, write in writers.items():
        write(tmp_path / name)
        assert _mode(tmp_path / name) == 0o666 & ~mask, name
    with atomic_path(tmp_path / "p.bin") as tmp:
        tmp.write_bytes(b"x")
    assert _mode(tmp_path / "p.bin") == 0o666 & ~mask
    with atomic_path(tmp_path / "w.safetensors") as tmp:  # a writer that recreates the file (as 0600)
        save_file({"w": torch.zeros(2)}, str(tmp))
    assert _mode(tmp_path / "w.safetensors") == 0o666 & ~mask
    with atomic_directory(tmp_path / "d") as d:
        (d / "f").write_text("x")
    assert _mode(tmp_path / "d") == 0o777 & ~mask
    atomic_write_text(tmp_path / "t.txt", "again")  # replacing a file gives the same
    assert _mode(tmp_path / "t.txt") == 0o666 & ~mask


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "1", "I;16"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    img = Image.new(mode, (7, 5))
    p = tmp_path / "x.png" if mode != "CMYK" else tmp_path / "x.jpg"
    img.save(p)
    out = load_image(p)
    assert out.mode == "RGB" and out.size == (7, 5)


def test_transparent_pixels_become_white():
    img = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert load_image(img).getpixel((0, 0)) == (255, 255, 255)


def test_bad_images_raise_data_error_naming_the_file(tmp_path):
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt.png: not a readable image"):
        load_image(bad)
    with pytest.raises(DataError, match="missing.png: image file not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="uint8 array"):
        load_image(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(DataError, match="not valid JSON"):
        bad_json = tmp_path / "r.json"
        bad_json.write_text("{")
        read_json(bad_json)


def test_dataset_images_read_from_structs_bytes_and_relative_paths(tmp_path):
    im = Image.new("RGBA", (4, 3), (255, 0, 0, 0))
    im.save(tmp_path / "a.png")
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    for value, base in [({"bytes": buf.getvalue(), "path": None}, None), ({"bytes": None, "path": "a.png"}, tmp_path),
                        ("a.png", tmp_path), (buf.getvalue(), None)]:
        got = load_dataset_image(value, base)
        assert got.mode == "RGB" and got.size == (4, 3) and got.getpixel((0, 0)) == (255, 255, 255)  # alpha over white
    with pytest.raises(DataError, match="row 2: field 'x': no image"):
        load_dataset_image({"bytes": None, "path": None}, what="row 2: field 'x'")
    with pytest.raises(DataError, match="image file not found"):
        load_dataset_image("b.png", tmp_path)
