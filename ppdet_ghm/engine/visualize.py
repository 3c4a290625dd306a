"""Drawing detections: boxes, class names and scores, with a fixed colour per class.

ppdet's visualizer picks colours with ``np.random`` (so it changes the global RNG and the
colours differ between runs); this one is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

__all__ = ["CLASS_COLOURS", "draw_detections", "image_grid"]

#: Box colours, class index modulo 10 (tab10-like, readable on light and dark backgrounds).
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64),
    (64, 255, 64),
    (80, 160, 255),
    (255, 200, 0),
    (255, 0, 255),
    (0, 255, 255),
    (255, 128, 0),
    (160, 96, 255),
    (255, 255, 255),
    (128, 255, 160),
)


def draw_detections(
    image: Image.Image,
    detections: Sequence[dict],
    threshold: float = 0.5,
    line_width: int = 2,
) -> Image.Image:
    """A copy of ``image`` with the detections of score >= ``threshold`` drawn.

    Args:
        image: the RGB image.
        detections: dicts with ``bbox`` [x, y, w, h] (pixels), ``score``, ``category_name`` and
            ``class_index`` (0-based, picks the colour).
        threshold: minimum score drawn.
    """
    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    for det in sorted(detections, key=lambda d: d["score"]):
        if det["score"] < threshold:
            continue
        x, y, w, h = det["bbox"]
        colour = CLASS_COLOURS[int(det["class_index"]) % len(CLASS_COLOURS)]
        draw.rectangle([x, y, x + w, y + h], outline=colour, width=line_width)
        text = f"{det['category_name']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text)
        tw, th = right - left, bottom - top
        ty = y - th - 3 if y - th - 3 >= 0 else y + 1
        draw.rectangle([x, ty, x + tw + 3, ty + th + 3], fill=colour)
        draw.text((x + 2, ty + 1 - top), text, fill=(0, 0, 0))
    return out


def image_grid(images: Sequence[Image.Image], columns: int = 4, pad: int = 4) -> Image.Image:
    """Tile images (scaled to the first one's size) into a grid with ``pad`` px gaps."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    width, height = images[0].size
    rows = (len(images) + columns - 1) // columns
    cols = min(columns, len(images))
    grid = Image.new("RGB", (cols * (width + pad) + pad, rows * (height + pad) + pad), (32, 32, 32))
    for i, im in enumerate(images):
        r, c = divmod(i, columns)
        grid.paste(im.resize((width, height)), (pad + c * (width + pad), pad + r * (height + pad)))
    return grid
