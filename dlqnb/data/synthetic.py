"""Deterministic rendered images: a MerchData-like set and the shapes set dlqnb pretrains on.

Neither MerchData nor ImageNet can be downloaded here, so dlqnb draws its own photographs-in-spirit:
one object per image, with random pose, scale, position, colour, lighting and background, every
image a pure function of ``(class, index, seed)``.

* **Merch** (:data:`MERCH_CLASSES`, MATLAB's five classes and MerchData's folder names): a navy
  cap, an orange cube, fanned playing cards, a red-handled screwdriver and a dark torch (flashlight).
  Like MerchData, which photographs one physical object per class, each class keeps its paint (its
  hue varies a little, and lighting varies a lot), so a person tells them apart at a glance.
* **Shapes** (:data:`SHAPE_CLASSES`): 24 generic figures (disk, ring, star, rod, dumbbell, ...) that
  dlqnb's SqueezeNet is pretrained on, so that the transfer-learning notebook really transfers:
  none of them is a merch class.

Example:
    >>> import numpy as np
    >>> a = render_merch("MathWorks Cube", np.random.default_rng(0))
    >>> b = render_merch("MathWorks Cube", np.random.default_rng(0))
    >>> a.size, a.tobytes() == b.tobytes()
    ((227, 227), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

__all__ = ["MERCH_CLASSES", "SHAPE_CLASSES", "render_merch", "render_shape", "sample_rng"]

MERCH_CLASSES = (
    "MathWorks Cap",
    "MathWorks Cube",
    "MathWorks Playing Cards",
    "MathWorks Screwdriver",
    "MathWorks Torch",
)
SHAPE_CLASSES = (
    "disk",
    "ring",
    "triangle",
    "square",
    "pentagon",
    "star",
    "cross",
    "crescent",
    "arrow",
    "stripes",
    "checker",
    "zigzag",
    "rod",
    "dumbbell",
    "hammer",
    "fan",
    "pyramid",
    "dome",
    "trapezoid",
    "dots",
    "two_tone_bar",
    "ring_pair",
    "frame",
    "wave",
)

_LAYER = 256  # objects are drawn on a square RGBA layer of this size, then posed
Color = tuple[int, int, int]


def sample_rng(seed: int, class_index: int, index: int) -> np.random.Generator:
    """The generator of one image: independent of every other image and of the order of rendering."""
    return np.random.default_rng([seed, class_index, index])


def _color(rng: np.random.Generator, saturation: tuple[float, float] = (0.5, 1.0), hue: float | None = None) -> Color:
    """A random colour; with ``hue``, one near that hue (a given object's paint under varied light)."""
    hue = rng.uniform(0, 1) if hue is None else (hue + rng.uniform(-0.04, 0.04)) % 1.0
    s = rng.uniform(*saturation)
    v = rng.uniform(0.45, 1.0)
    i = int(hue * 6) % 6
    f = hue * 6 - int(hue * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return int(r * 255), int(g * 255), int(b * 255)


def _shade(color: Color, factor: float) -> Color:
    return tuple(int(max(0, min(255, c * factor))) for c in color)  # type: ignore[return-value]


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    kind = rng.integers(0, 3)
    base = np.array(_color(rng, (0.0, 0.35)), dtype=np.float32)
    other = np.array(_color(rng, (0.0, 0.35)), dtype=np.float32)
    rows = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    if kind == 0:  # plain wall
        pixels = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == 1:  # gradient
        pixels = base * (1 - rows) + other * rows
        pixels = np.broadcast_to(pixels, (size, size, 3)).copy()
    else:  # table top below a horizon
        horizon = int(rng.uniform(0.2, 0.6) * size)
        pixels = np.broadcast_to(base, (size, size, 3)).copy()
        pixels[horizon:] = other
    pixels += rng.normal(0, rng.uniform(2, 10), pixels.shape).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def _pose(
    layer: Image.Image, background: Image.Image, rng: np.random.Generator, scale: tuple[float, float]
) -> Image.Image:
    size = background.size[0]
    layer = layer.rotate(float(rng.uniform(0, 360)), resample=Image.BICUBIC, expand=False)
    target = max(8, int(size * rng.uniform(*scale)))
    layer = layer.resize((target, target), Image.BICUBIC)
    margin = size - target
    x = int(rng.uniform(-0.1, 1.1) * margin) if margin > 0 else margin // 2
    y = int(rng.uniform(-0.1, 1.1) * margin) if margin > 0 else margin // 2
    shadow_mask = layer.getchannel("A").point(lambda a: a // 3).filter(ImageFilter.GaussianBlur(4))
    background = background.copy()
    background.paste((0, 0, 0), (x + 4, y + 5, x + 4 + target, y + 5 + target), shadow_mask)
    background.paste(layer, (x, y), layer)
    return background


def _finish(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.7, 1.3)))
    image = ImageEnhance.Contrast(image).enhance(float(rng.uniform(0.8, 1.2)))
    if rng.uniform() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 1.0))))
    return image


def _layer() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    layer = Image.new("RGBA", (_LAYER, _LAYER), (0, 0, 0, 0))
    return layer, ImageDraw.Draw(layer)


# ----------------------------------------------------------------------------------------- merch
def _cap(rng: np.random.Generator) -> Image.Image:
    layer, draw = _layer()
    color = _color(rng, (0.6, 0.9), hue=0.62)  # a navy-blue cap
    draw.ellipse((44, 100, 236, 140), fill=_shade(color, 0.7))  # brim, sticking out to the right
    draw.chord((50, 40, 190, 200), 180, 360, fill=color)  # crown
    draw.ellipse((112, 34, 128, 50), fill=_shade(color, 0.8))  # button
    for angle in (220, 270, 320):  # seams
        x = 120 + 70 * math.cos(math.radians(angle))
        y = 120 + 80 * math.sin(math.radians(angle))
        draw.line((120, 42, x, y), fill=_shade(color, 0.6), width=2)
    draw.ellipse((96, 84, 140, 116), fill=(235, 110, 30))  # logo
    return layer


def _cube(rng: np.random.Generator) -> Image.Image:
    layer, draw = _layer()
    color = _color(rng, (0.7, 1.0), hue=0.07)  # an orange cube
    c, r = 128, 84
    top = [(c, c - r), (c + r, c - r // 2), (c, c), (c - r, c - r // 2)]
    left = [(c - r, c - r // 2), (c, c), (c, c + r), (c - r, c + r // 2)]
    right = [(c, c), (c + r, c - r // 2), (c + r, c + r // 2), (c, c + r)]
    draw.polygon(top, fill=_shade(color, 1.25))
    draw.polygon(left, fill=color)
    draw.polygon(right, fill=_shade(color, 0.6))
    for face in (top, left, right):
        draw.line(face + [face[0]], fill=_shade(color, 0.35), width=3)
    draw.ellipse((c - 56, c + 10, c - 24, c + 44), fill=(250, 250, 250))  # logo on a face
    return layer


def _card(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], red: bool) -> None:
    draw.rounded_rectangle(box, radius=8, fill=(250, 250, 245), outline=(40, 40, 40), width=2)
    ink = (200, 20, 30) if red else (20, 20, 20)
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    draw.polygon([(cx, cy - 16), (cx + 12, cy), (cx, cy + 16), (cx - 12, cy)], fill=ink)
    draw.text((x0 + 6, y0 + 4), "A", fill=ink)
    draw.ellipse((x1 - 16, y1 - 16, x1 - 8, y1 - 8), fill=ink)


def _playing_cards(rng: np.random.Generator) -> Image.Image:
    layer, _ = _layer()
    count = int(rng.integers(2, 5))
    for i in range(count):
        card, draw = _layer()
        _card(draw, (96, 40, 176, 160), red=bool(rng.integers(0, 2)))
        card = card.rotate(-30 + 60 * i / max(1, count - 1) + rng.uniform(-5, 5), center=(136, 200), resample=Image.BICUBIC)
        layer.alpha_composite(card)
    return layer


def _screwdriver(rng: np.random.Generator) -> Image.Image:
    layer, draw = _layer()
    handle = _color(rng, (0.7, 1.0), hue=0.0)  # a red handle
    draw.rounded_rectangle((20, 104, 110, 152), radius=16, fill=handle)
    for y in (114, 128, 142):
        draw.line((30, y, 100, y), fill=_shade(handle, 0.6), width=3)
    draw.rectangle((110, 122, 226, 134), fill=(175, 175, 185))  # shaft
    draw.polygon([(226, 120), (240, 125), (240, 131), (226, 136)], fill=(140, 140, 150))  # flat tip
    draw.line((112, 124, 224, 124), fill=(225, 225, 235), width=2)  # metal highlight
    return layer


def _torch(rng: np.random.Generator) -> Image.Image:
    layer, draw = _layer()
    body = _shade(_color(rng, (0.1, 0.3), hue=0.6), 0.35)  # a dark, almost black barrel
    draw.rounded_rectangle((30, 100, 160, 156), radius=10, fill=body)  # barrel
    draw.polygon([(160, 94), (214, 70), (214, 186), (160, 162)], fill=(190, 190, 200))  # head
    draw.ellipse((200, 70, 228, 186), fill=(255, 245, 170))  # lens
    draw.rectangle((90, 92, 110, 100), fill=(220, 40, 40))  # switch
    for x in (44, 58, 72):
        draw.line((x, 104, x, 152), fill=_shade(body, 0.6), width=3)  # grip
    return layer


_MERCH_DRAWERS: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "MathWorks Cap": _cap,
    "MathWorks Cube": _cube,
    "MathWorks Playing Cards": _playing_cards,
    "MathWorks Screwdriver": _screwdriver,
    "MathWorks Torch": _torch,
}


def render_merch(class_name: str, rng: np.random.Generator, size: int = 227) -> Image.Image:
    """One MerchData-like photograph of ``class_name`` (an RGB image of ``size``×``size``)."""
    if class_name not in _MERCH_DRAWERS:
        raise ValueError(f"unknown merch class {class_name!r}; expected one of {list(MERCH_CLASSES)}")
    background = _background(rng, size)
    layer = _MERCH_DRAWERS[class_name](rng)
    return _finish(_pose(layer, background, rng, scale=(0.55, 0.95)), rng)


# ----------------------------------------------------------------------------------------- shapes
def _regular(c: float, r: float, n: int, phase: float = -90) -> list[tuple[float, float]]:
    return [(c + r * math.cos(math.radians(phase + 360 * i / n)), c + r * math.sin(math.radians(phase + 360 * i / n))) for i in range(n)]


def _draw_shape(name: str, draw: ImageDraw.ImageDraw, color: Color, rng: np.random.Generator) -> None:
    c, r = _LAYER / 2, _LAYER * 0.38
    second = _shade(color, 0.45)
    if name == "disk":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=color)
    elif name == "ring":
        draw.ellipse((c - r, c - r, c + r, c + r), outline=color, width=int(r * rng.uniform(0.2, 0.4)))
    elif name == "triangle":
        draw.polygon(_regular(c, r, 3), fill=color)
    elif name == "square":
        draw.polygon(_regular(c, r, 4, 45), fill=color)
    elif name == "pentagon":
        draw.polygon(_regular(c, r, 5), fill=color)
    elif name == "star":
        points = [p for i in range(5) for p in (_regular(c, r, 5)[i], _regular(c, r * 0.4, 5, -54)[i])]
        draw.polygon(points, fill=color)
    elif name == "cross":
        w = r * 0.35
        draw.rectangle((c - w, c - r, c + w, c + r), fill=color)
        draw.rectangle((c - r, c - w, c + r, c + w), fill=color)
    elif name == "crescent":
        draw.ellipse((c - r, c - r, c + r, c + r), fill=color)
        shift = r * rng.uniform(0.4, 0.7)
        draw.ellipse((c - r + shift, c - r - shift / 3, c + r + shift, c + r - shift / 3), fill=(0, 0, 0, 0))
    elif name == "arrow":
        draw.rectangle((c - r, c - r * 0.15, c + r * 0.3, c + r * 0.15), fill=color)
        draw.polygon([(c + r * 0.3, c - r * 0.5), (c + r, c), (c + r * 0.3, c + r * 0.5)], fill=color)
    elif name == "stripes":
        count = int(rng.integers(3, 7))
        step = 2 * r / count
        for i in range(count):
            draw.rectangle((c - r, c - r + i * step, c + r, c - r + (i + 0.5) * step), fill=color if i % 2 == 0 else second)
    elif name == "checker":
        count = int(rng.integers(3, 6))
        step = 2 * r / count
        for i in range(count):
            for j in range(count):
                fill = color if (i + j) % 2 == 0 else second
                draw.rectangle((c - r + i * step, c - r + j * step, c - r + (i + 1) * step, c - r + (j + 1) * step), fill=fill)
    elif name == "zigzag":
        count = int(rng.integers(3, 7))
        points = [(c - r + 2 * r * i / count, c + (r * 0.5 if i % 2 else -r * 0.5)) for i in range(count + 1)]
        draw.line(points, fill=color, width=int(r * 0.18), joint="curve")
    elif name == "rod":
        w = r * rng.uniform(0.08, 0.16)
        draw.rounded_rectangle((c - r, c - w, c + r, c + w), radius=w, fill=color)
    elif name == "dumbbell":
        w, d = r * 0.1, r * 0.32
        draw.rectangle((c - r + d, c - w, c + r - d, c + w), fill=second)
        draw.ellipse((c - r, c - d, c - r + 2 * d, c + d), fill=color)
        draw.ellipse((c + r - 2 * d, c - d, c + r, c + d), fill=color)
    elif name == "hammer":
        draw.rectangle((c - r * 0.1, c - r * 0.5, c + r * 0.1, c + r), fill=second)
        draw.rectangle((c - r * 0.6, c - r * 0.8, c + r * 0.6, c - r * 0.45), fill=color)
    elif name == "fan":
        for angle in (-30, 0, 30):
            corners = [(-0.3, -0.9), (0.3, -0.9), (0.3, 0.2), (-0.3, 0.2)]
            a = math.radians(angle)
            points = [(c + r * (x * math.cos(a) - y * math.sin(a)), c + r * 0.4 + r * (x * math.sin(a) + y * math.cos(a))) for x, y in corners]
            draw.polygon(points, fill=_shade(color, 1.0 + angle / 100), outline=second)
    elif name == "pyramid":
        apex, left, right, front = (c, c - r), (c - r, c + r * 0.5), (c + r, c + r * 0.5), (c + r * 0.1, c + r * 0.8)
        draw.polygon([apex, left, front], fill=color)
        draw.polygon([apex, front, right], fill=_shade(color, 0.55))
    elif name == "dome":
        draw.chord((c - r, c - r * 0.8, c + r, c + r * 1.2), 180, 360, fill=color)
        draw.rectangle((c - r, c + r * 0.18, c + r, c + r * 0.3), fill=second)
    elif name == "trapezoid":
        draw.polygon([(c - r * 0.4, c - r * 0.6), (c + r * 0.4, c - r * 0.6), (c + r, c + r * 0.6), (c - r, c + r * 0.6)], fill=color)
    elif name == "dots":
        for _ in range(int(rng.integers(5, 12))):
            x, y, d = c + rng.uniform(-r, r), c + rng.uniform(-r, r), r * rng.uniform(0.1, 0.22)
            draw.ellipse((x - d, y - d, x + d, y + d), fill=color)
    elif name == "two_tone_bar":
        w = r * 0.22
        split = c + r * rng.uniform(-0.4, 0.4)
        draw.rectangle((c - r, c - w, split, c + w), fill=color)
        draw.rectangle((split, c - w * 0.5, c + r, c + w * 0.5), fill=_color(rng, (0.0, 0.2)))
    elif name == "ring_pair":
        width = int(r * 0.15)
        draw.ellipse((c - r, c - r * 0.5, c + r * 0.2, c + r * 0.7), outline=color, width=width)
        draw.ellipse((c - r * 0.2, c - r * 0.7, c + r, c + r * 0.5), outline=second, width=width)
    elif name == "frame":
        draw.rectangle((c - r * 0.7, c - r, c + r * 0.7, c + r), fill=color)
        draw.rectangle((c - r * 0.5, c - r * 0.8, c + r * 0.5, c + r * 0.8), fill=(240, 240, 235, 255))
    elif name == "wave":
        points = [(c - r + 2 * r * i / 40, c + r * 0.4 * math.sin(i / 40 * 2 * math.pi * rng.uniform(1.5, 3))) for i in range(41)]
        draw.line(points, fill=color, width=int(r * 0.12), joint="curve")
    else:
        raise ValueError(f"unknown shape class {name!r}; expected one of {list(SHAPE_CLASSES)}")


def render_shape(class_name: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """One image of a generic figure from :data:`SHAPE_CLASSES`, with random clutter."""
    background = _background(rng, size)
    clutter = ImageDraw.Draw(background)
    for _ in range(int(rng.integers(0, 4))):  # distractor strokes
        points = [tuple(rng.uniform(0, size, 2)) for _ in range(2)]
        clutter.line(points, fill=_color(rng, (0.0, 0.6)), width=int(rng.integers(1, 4)))
    layer, draw = _layer()
    _draw_shape(class_name, draw, _color(rng), rng)
    return _finish(_pose(layer, background, rng, scale=(0.35, 0.95)), rng)
