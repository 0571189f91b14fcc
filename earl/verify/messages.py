"""Chat messages with images, and their OpenAI wire form.

Inside earl a judge conversation is a list of messages in the Hugging Face chat form, with the
images inline as PIL objects:

    [{"role": "system", "content": "You are ..."},
     {"role": "user", "content": [{"type": "image", "image": <PIL.Image>},
                                  {"type": "text", "text": "Instruction: ..."}]}]

On the wire (OpenAI chat-completions, which vLLM, SGLang and `earl serve judge` speak) an image
part is {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}. `to_openai` and
`from_openai` convert between the two; `from_openai` validates, so a server can answer a
malformed request with a 400 that says what was wrong. Only data URLs are accepted: a judge
server never fetches URLs on a client's behalf, and an image is decoded only after its header's
size passed `max_pixels` (a 30000x30000 PNG header is a DataError, never a decompression bomb).
"""

from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, UnidentifiedImageError

from earl.errors import DataError
from earl.io import to_rgb

ROLES = ("system", "user", "assistant")
MAX_IMAGE_PIXELS = 8192 * 4096  # the most pixels one image part may decode to (a few hundred MB of RGB)


def image_to_data_url(image: Image.Image) -> str:
    """PNG-encode an image (converted to RGB) as a base64 data URL."""
    buf = io.BytesIO()
    to_rgb(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def data_url_to_image(url: str, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode a `data:image/...;base64,...` URL into an RGB image of at most `max_pixels` pixels (checked
    from the header, before the pixels are decoded); anything else is a DataError."""
    if not isinstance(url, str) or not url.startswith("data:"):
        shown = url[:40] if isinstance(url, str) else type(url).__name__
        raise DataError(f"image_url must be a base64 data URL (data:image/png;base64,...), got {shown!r}")
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64") or not header[5:].startswith("image/"):
        raise DataError(f"image_url: expected 'data:image/<type>;base64,<data>', got a URL starting {url[:40]!r}")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"image_url: invalid base64 ({e})") from None
    try:
        img = Image.open(io.BytesIO(data))
        width, height = img.size
        if width * height > max_pixels:
            raise DataError(f"image_url: a {width}x{height} image has {width * height} pixels, more than the "
                            f"{max_pixels} allowed")
        img.load()
    except DataError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"image_url: not a readable image ({type(e).__name__}: {e})") from None
    return to_rgb(img)


def to_openai(messages: list[dict]) -> list[dict]:
    """Internal messages -> OpenAI wire form (image parts become base64 PNG `image_url` parts)."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = [
                {"type": "image_url", "image_url": {"url": image_to_data_url(p["image"])}} if p["type"] == "image" else p
                for p in content
            ]
        out.append({"role": m["role"], "content": content})
    return out


def _part_from_openai(part, where: str, max_pixels: int) -> dict:
    if not isinstance(part, dict) or "type" not in part:
        raise DataError(f"{where}: a content part must be an object with a 'type'")
    if part["type"] == "text":
        if not isinstance(part.get("text"), str):
            raise DataError(f"{where}: a text part needs a string 'text'")
        return {"type": "text", "text": part["text"]}
    if part["type"] == "image_url":
        spec = part.get("image_url")
        url = spec.get("url") if isinstance(spec, dict) else spec
        try:
            return {"type": "image", "image": data_url_to_image(url, max_pixels)}
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
    raise DataError(f"{where}: unsupported content part type {part['type']!r}; expected 'text' or 'image_url'")


def from_openai(messages, max_pixels: int = MAX_IMAGE_PIXELS) -> list[dict]:
    """OpenAI wire messages -> internal messages (images decoded, `max_pixels` each at most), validating
    as it goes."""
    if not isinstance(messages, list) or not messages:
        raise DataError("'messages' must be a non-empty list")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise DataError(f"{where}: expected an object with 'role' and 'content'")
        if m.get("role") not in ROLES:
            raise DataError(f"{where}: role must be one of {', '.join(ROLES)}, got {m.get('role')!r}")
        content = m.get("content")
        if isinstance(content, list):
            content = [_part_from_openai(p, f"{where}.content[{j}]", max_pixels) for j, p in enumerate(content)]
        elif not isinstance(content, str):
            raise DataError(f"{where}: content must be a string or a list of parts")
        out.append({"role": m["role"], "content": content})
    return out


def split_images(messages: list[dict]) -> tuple[list[dict], list[Image.Image]]:
    """Internal messages -> (the same with bare {"type": "image"} placeholders, the images in order).

    This is the form `processor.apply_chat_template(..., tokenize=False)` expects: the template
    writes each model's image marker, and the processor gets the pixels separately.
    """
    images, out = [], []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            parts = []
            for p in content:
                if p["type"] == "image":
                    images.append(p["image"])
                    parts.append({"type": "image"})
                else:
                    parts.append(p)
            content = parts
        out.append({"role": m["role"], "content": content})
    return out, images
