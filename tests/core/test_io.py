import numpy as np
import pytest
from PIL import Image

from earl.errors import DataError
from earl.io import atomic_directory, atomic_path, atomic_write_json, load_image, read_json


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
