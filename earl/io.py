"""Small I/O helpers used everywhere: atomic writes, strict JSON/JSONL reading and image loading.

Why atomic: a training or evaluation killed mid-write must never leave a half-written checkpoint
or result file behind; readers see either the old file or the new one. We write to a temporary
file in the same directory and `os.replace` it over the target (atomic on POSIX).

The staging file is created with mode 0666 and the staging directory with 0777, so the process
umask applies as it does to `open` and `mkdir` (0644 and 0755 under umask 022), not the private
0600/0700 of `tempfile.mkstemp`/`mkdtemp`, which `os.replace` would carry over to the result.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from earl.errors import DataError


def _staging_name(path: Path, suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")


def current_umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter before Python 3.13's os)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _create_staging_file(path: Path) -> Path:
    """A new empty file next to `path`, mode 0666 & ~umask (O_EXCL: never an existing file)."""
    while True:
        tmp = _staging_name(path, ".tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _create_staging_directory(path: Path) -> Path:
    """A new empty directory next to `path`, mode 0777 & ~umask."""
    while True:
        tmp = _staging_name(path)
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; on success rename it over `path`, on error delete it.
    The result has the permissions a plain `open(path, "w")` would give it (0666 & ~umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_staging_file(path)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # a writer that recreates the file (safetensors) gets 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield an empty staging directory next to `path`; on success swap it in for `path` (an existing
    directory is replaced only once the new one is complete), on error delete it. The directory
    gets 0777 & ~umask, as `mkdir` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = _create_staging_directory(path)
    try:
        yield staging
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(staging, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Save a PIL image as PNG atomically."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


# the file extensions an edited image can be written as, and their PIL formats
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP",
                 ".tif": "TIFF", ".tiff": "TIFF"}


def image_format(path: str | os.PathLike) -> str | None:
    """The PIL format an image at `path` is written in (from its extension, any case), or None."""
    return IMAGE_FORMATS.get(Path(path).suffix.lower())


def save_image(image: Image.Image, path: str | os.PathLike) -> None:
    """Save a PIL image atomically in the format its extension names (`IMAGE_FORMATS`)."""
    fmt = image_format(path)
    if fmt is None:
        raise DataError(f"{path}: unknown image extension (expected one of {', '.join(IMAGE_FORMATS)})")
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a JSON file)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def iter_jsonl(path: str | os.PathLike, torn_tail: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSONL file, read lazily (a dataset may be large).

    A line that is not JSON raises `DataError` naming the file and line. `torn_tail=True` is for logs a
    process appends to and may be killed while writing: a last line with no newline after it that is
    not JSON is the half-written record, and is skipped instead. A bad line followed by a newline is
    still an error, wherever it is."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a JSONL file: one JSON value per line)")
    n = 0
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    if torn_tail and not line.endswith("\n"):  # only the file's last line can lack one
                        return
                    raise DataError(f"{path}:{n}: not valid JSON ({e})") from None
                yield n, value
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text after line {n} ({e})") from None


def read_jsonl(path: str | os.PathLike, torn_tail: bool = False) -> list[Any]:
    """The values of a JSONL file's non-blank lines, in order (`iter_jsonl` for the rules)."""
    return [value for _, value in iter_jsonl(path, torn_tail=torn_tail)]


def load_image(source: str | os.PathLike | bytes | Image.Image | np.ndarray, what: str = "image") -> Image.Image:
    """Load an image from a path, PNG/JPEG bytes, a PIL image or an HxWx3 uint8 array, as RGB.

    Conversion rule: palette/grayscale/CMYK images are converted to RGB; images with alpha are
    composited onto white (so transparent regions read as white, not black). Corrupt or missing
    files raise `DataError` naming the file.
    """
    name = what
    if isinstance(source, Image.Image):
        img = source
    elif isinstance(source, np.ndarray):
        arr = source
        if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise DataError(f"{what}: expected a uint8 array of shape HxW, HxWx3 or HxWx4, got {arr.dtype} {arr.shape}")
        img = Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    else:
        if isinstance(source, (bytes, bytearray)):
            fp: Any = io.BytesIO(source)
        else:
            name = str(source)
            if not Path(source).is_file():
                raise DataError(f"{name}: image file not found")
            fp = source
        try:
            img = Image.open(fp)
            img.load()
        except (UnidentifiedImageError, OSError, SyntaxError) as e:
            raise DataError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
    return to_rgb(img)


def load_dataset_image(value, base: str | os.PathLike | None = None, what: str = "image") -> Image.Image:
    """An image as a dataset stores it, as RGB: a `datasets.Image` struct ({"bytes", "path"}, as parquet and
    Arrow files hold it), bytes, a PIL image, or a path, relative to `base` when given (the data file's
    folder). Unreadable or missing images raise `DataError` naming `what` or the file."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None:
        raise DataError(f"{what}: no image (neither bytes nor a path)")
    if isinstance(value, (str, os.PathLike)) and base is not None and not Path(value).is_absolute():
        value = Path(base) / value
    return load_image(value, what=what)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; alpha is composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")
