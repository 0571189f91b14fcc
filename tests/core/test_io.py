import io
import json
import os
import random
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
    iter_jsonl,
    load_dataset_image,
    load_image,
    read_json,
    read_jsonl,
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


def _old_reader(text: str) -> list:
    """What the JSONL readers did before `read_jsonl`: split the text into lines, skip blank ones."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _random_row(rng: random.Random) -> dict:
    return {"step": rng.randrange(10**6), "loss": rng.uniform(-1e3, 1e3), "nan": float("nan"),
            "text": "".join(rng.choice("ab \t\"\\é😀") for _ in range(rng.randrange(8))),
            "nested": [rng.random(), None, True, {"k": -0.0}], "big": rng.getrandbits(80)}


def test_read_jsonl_reads_valid_files_as_the_old_readers_did(tmp_path):
    rng = random.Random(0)
    for trial in range(50):
        rows = [_random_row(rng) for _ in range(rng.randrange(1, 6))]
        lines = [json.dumps(r) for r in rows]
        for _ in range(rng.randrange(3)):
            lines.insert(rng.randrange(len(lines) + 1), rng.choice(["", "  ", "\t"]))
        text = "\n".join(lines) + rng.choice(["", "\n"])
        f = tmp_path / f"{trial}.jsonl"
        f.write_text(text, encoding="utf-8")
        # NaN != NaN: compare the re-serialised values
        assert json.dumps(read_jsonl(f)) == json.dumps(_old_reader(text)) == json.dumps(rows)
        assert json.dumps(read_jsonl(f, torn_tail=True)) == json.dumps(rows)


def test_read_jsonl_skips_blank_lines_and_counts_them(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"a": 1}\r\n\r\n   \n[2]\n\n"three"')
    assert read_jsonl(f) == [{"a": 1}, [2], "three"]
    assert list(iter_jsonl(f)) == [(1, {"a": 1}), (4, [2]), (6, "three")]
    # a raw U+2028 inside a string (json.dumps(..., ensure_ascii=False)) is not a line break
    f.write_text(json.dumps({"t": "x\u2028y"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert read_jsonl(f) == [{"t": "x\u2028y"}]


def test_a_bad_line_is_an_error_naming_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"a": 1}\n\n{"a": 2\n{"a": 3}\n')
    for torn_tail in (False, True):  # a bad line before the last is never a torn tail
        with pytest.raises(DataError, match=r"bad.jsonl:3: not valid JSON"):
            read_jsonl(f, torn_tail=torn_tail)
    with pytest.raises(DataError, match=r"missing.jsonl: file not found"):
        read_jsonl(tmp_path / "missing.jsonl")
    f.write_bytes(b'{"a": 1}\n"\xff"\n')
    with pytest.raises(DataError, match=r"bad.jsonl: not UTF-8"):
        read_jsonl(f)


def test_a_torn_last_line_is_skipped_only_when_asked(tmp_path):
    f = tmp_path / "log.jsonl"
    f.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')  # a writer killed mid-line
    with pytest.raises(DataError, match=r"log.jsonl:3: not valid JSON"):
        read_jsonl(f)
    assert read_jsonl(f, torn_tail=True) == [{"step": 1}, {"step": 2}]
    f.write_text('{"step": 1}\n{"step": 2}')  # killed just before the newline: the record is whole
    assert read_jsonl(f, torn_tail=True) == [{"step": 1}, {"step": 2}]
    f.write_text('{"step": 1}\n{"step": 2, "lo\n')  # ended by a newline: not torn, corrupt
    with pytest.raises(DataError, match=r"log.jsonl:2: not valid JSON"):
        read_jsonl(f, torn_tail=True)
