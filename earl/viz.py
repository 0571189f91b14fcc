"""Pictures people would rather look at than numbers: labelled image grids and curves."""

from __future__ import annotations

from PIL import Image, ImageDraw


def image_grid(rows: list[list[Image.Image]], col_labels: list[str] | None = None, scale: int = 2,
               pad: int = 4, label_height: int = 14) -> Image.Image:
    """Rows of equally sized images, upscaled (nearest) by `scale`, with optional column labels on top."""
    if not rows or not rows[0]:
        raise ValueError("image_grid: nothing to draw")
    w, h = rows[0][0].size
    w, h = w * scale, h * scale
    ncol = max(len(r) for r in rows)
    top = label_height if col_labels else 0
    canvas = Image.new("RGB", (ncol * (w + pad) + pad, top + len(rows) * (h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for c, label in enumerate(col_labels or []):
        draw.text((pad + c * (w + pad), 1), label, fill=(0, 0, 0))
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            im = im.convert("RGB").resize((w, h), Image.Resampling.NEAREST)
            canvas.paste(im, (pad + c * (w + pad), top + pad + r * (h + pad)))
    return canvas
