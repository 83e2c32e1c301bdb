"""Synthetic camera scenes: person / vehicle / empty, drawn procedurally with PIL.

Nothing is downloaded: every image is drawn from a seed. Each image has its own random stream
(seed, stream, class, index), so image 7 of "person" is the same whatever count was asked for,
and the train, validation and demo-frame streams never share an image.

Scenes vary what a fixed outdoor camera sees: sky and ground colours, horizon height, time of
day (brightness, contrast, colour cast), sensor noise, slight blur, and background clutter
(trees, buildings, poles, bushes) that appears in every class, so the model has to look at the
person or the vehicle rather than at the background.

Every object drawn is also drawn on a mask, so its box is known exactly (`render_scene_boxes`):
the box is the smallest rectangle holding every pixel of the object, after the mirror flip.

Dataset layout (format version 2, the `ImageFolder` layout SageMaker channels commonly use,
plus each split's boxes; version 1 had no boxes.json):

    DIR/dataset.json               {"format_version": 2, "classes": [...], "seed": .., "size": [W, H], "counts": {...}}
    DIR/train/<class>/<class>-00000.png
    DIR/train/boxes.json           {"format_version": 2, "size": [W, H], "images": {"<class>/<file>.png": [box, ...]}}
    DIR/validation/...             the same

A box is {"label": "person", "box_px": [x1, y1, x2, y2], "box": [x1/W, y1/H, x2/W, y2/H]}, in
pixels with x2, y2 exclusive; "empty" scenes have none. The classifier reads only the class folders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgefleet.errors import UsageError

DATASET_FORMAT_VERSION = 2
CLASSES: tuple[str, ...] = ("person", "vehicle", "empty")
# Streams keep train, validation and demo frames apart for the same seed.
STREAMS = {"train": 0, "validation": 1, "frames": 2}
DATASET_SIZE = (96, 72)  # 4:3 like a camera frame; training resizes to the model input
FRAME_SIZE = (320, 240)
FRAME_FORMATS = {"jpg": "JPEG", "png": "PNG"}

_SKIES = [
    ((110, 160, 230), (190, 215, 245)),
    ((150, 155, 165), (200, 200, 205)),
    ((70, 60, 120), (240, 150, 90)),
    ((20, 25, 50), (60, 70, 110)),
]
_GROUNDS = [(70, 120, 50), (105, 105, 105), (150, 130, 95), (85, 80, 75), (120, 140, 90), (60, 60, 65)]
_CLOTHES = [
    (200, 40, 40),
    (40, 70, 170),
    (30, 30, 30),
    (230, 230, 230),
    (60, 140, 60),
    (230, 180, 40),
    (120, 60, 140),
    (90, 60, 40),
]
_SKIN = [(240, 200, 170), (200, 150, 110), (140, 95, 65), (90, 60, 40)]
_PAINT = [
    (190, 20, 20),
    (20, 50, 150),
    (220, 220, 220),
    (25, 25, 25),
    (130, 130, 140),
    (230, 200, 30),
    (30, 110, 60),
    (240, 120, 20),
]


@dataclass(frozen=True)
class SceneBox:
    """Where an object was drawn: pixels (x1, y1, x2, y2; x2, y2 exclusive) and the same over the frame's W, H."""

    label: str
    box_px: tuple[int, int, int, int]
    box: tuple[float, float, float, float]

    def as_json(self) -> dict:
        return {"label": self.label, "box_px": list(self.box_px), "box": list(self.box)}


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    boxes: tuple[SceneBox, ...]


class _Traced:
    """Forwards drawing calls to the scene and, filled white, to the object's mask: what gives its box."""

    def __init__(self, draw: ImageDraw.ImageDraw, mask: ImageDraw.ImageDraw) -> None:
        self.draw, self.mask = draw, mask

    def __getattr__(self, name: str):
        def both(*args, **kwargs):
            getattr(self.draw, name)(*args, **kwargs)
            getattr(self.mask, name)(*args, **{**kwargs, "fill": 255})

        return both


def _rng(seed: int, stream: str, label: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[stream], CLASSES.index(label), index])


def _colour(rng: np.random.Generator, base: tuple[int, int, int], jitter: int = 25) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-jitter, jitter + 1), 0, 255)) for c in base)


def _pick(rng: np.random.Generator, options: list) -> tuple[int, int, int]:
    return options[int(rng.integers(len(options)))]


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[Image.Image, int]:
    horizon = int(h * rng.uniform(0.3, 0.55))
    top, bottom = _pick(rng, _SKIES)
    ground = np.array(_colour(rng, _pick(rng, _GROUNDS), 20), dtype=np.float32)
    pixels = np.empty((h, w, 3), dtype=np.float32)
    t = np.linspace(0.0, 1.0, max(horizon, 1))[:, None]
    pixels[:horizon] = (np.array(top) * (1 - t) + np.array(bottom) * t)[:, None, :]
    # The ground darkens towards the camera a little, like a lit scene seen from above.
    g = np.linspace(1.0, rng.uniform(0.7, 1.0), h - horizon)[:, None, None]
    pixels[horizon:] = ground * g
    return Image.fromarray(pixels.astype(np.uint8)), horizon


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int, horizon: int, count: int) -> None:
    """Trees, buildings, poles and bushes: present in every class so they carry no label."""
    for _ in range(count):
        kind = int(rng.integers(4))
        x = rng.uniform(-0.1, 1.0) * w
        if kind == 0:  # building on the horizon
            bw, bh = rng.uniform(0.1, 0.3) * w, rng.uniform(0.1, 0.35) * h
            wall = _colour(rng, (150, 140, 130), 50)
            draw.rectangle([x, horizon - bh, x + bw, horizon], fill=wall)
            win = _colour(rng, (60, 70, 90), 30)
            step = max(3.0, bw / 5)
            for wx in np.arange(x + step / 3, x + bw - step / 2, step):
                draw.rectangle([wx, horizon - bh * 0.8, wx + step / 3, horizon - bh * 0.6], fill=win)
        elif kind == 1:  # tree
            th = rng.uniform(0.15, 0.4) * h
            base = horizon + rng.uniform(0, 0.15) * h
            draw.rectangle([x - th * 0.05, base - th, x + th * 0.05, base], fill=_colour(rng, (90, 60, 30)))
            r = th * rng.uniform(0.25, 0.4)
            draw.ellipse([x - r, base - th - r, x + r, base - th + r], fill=_colour(rng, (40, 110, 40), 35))
        elif kind == 2:  # pole or post
            ph = rng.uniform(0.2, 0.5) * h
            base = horizon + rng.uniform(0, 0.3) * h
            draw.rectangle([x, base - ph, x + max(1.0, w * 0.012), base], fill=_colour(rng, (80, 80, 85), 30))
        else:  # bush
            bw = rng.uniform(0.08, 0.2) * w
            y = horizon + rng.uniform(0.05, 0.5) * (h - horizon)
            draw.ellipse([x, y - bw * 0.5, x + bw, y], fill=_colour(rng, (50, 100, 45), 30))


def _person(draw: _Traced, rng: np.random.Generator, w: int, h: int, horizon: int) -> None:
    feet = horizon + rng.uniform(0.25, 1.0) * (h - horizon)
    # Nearer people (feet lower in the frame) look taller.
    height = h * rng.uniform(0.3, 0.55) * (0.6 + 0.6 * (feet - horizon) / max(h - horizon, 1))
    cx = rng.uniform(0.1, 0.9) * w
    head = height * 0.13
    shoulder = height * 0.16
    hip = feet - height * 0.47
    shirt, pants, skin = _pick(rng, _CLOTHES), _pick(rng, _CLOTHES), _colour(rng, _pick(rng, _SKIN), 10)
    limb = max(1, int(height * 0.07))
    stride = height * rng.uniform(0.0, 0.15)
    draw.line([cx - limb / 2, hip, cx - limb / 2 - stride, feet], fill=pants, width=limb)
    draw.line([cx + limb / 2, hip, cx + limb / 2 + stride, feet], fill=pants, width=limb)
    top = feet - height + 2 * head
    draw.rectangle([cx - shoulder / 2, top, cx + shoulder / 2, hip + limb], fill=shirt)
    swing = height * rng.uniform(-0.12, 0.12)
    draw.line(
        [cx - shoulder / 2, top + limb / 2, cx - shoulder / 2 - height * 0.05 + swing, hip],
        fill=shirt,
        width=max(1, limb - 1),
    )
    draw.line(
        [cx + shoulder / 2, top + limb / 2, cx + shoulder / 2 + height * 0.05 - swing, hip],
        fill=shirt,
        width=max(1, limb - 1),
    )
    draw.ellipse([cx - head, top - 2 * head, cx + head, top], fill=skin)


def _vehicle(draw: _Traced, rng: np.random.Generator, w: int, h: int, horizon: int) -> None:
    ground = horizon + rng.uniform(0.3, 1.0) * (h - horizon)
    length = w * rng.uniform(0.35, 0.7) * (0.6 + 0.5 * (ground - horizon) / max(h - horizon, 1))
    x0 = rng.uniform(0.15, 0.85) * w - length / 2
    wheel = length * 0.11
    body_h = length * rng.uniform(0.18, 0.26)
    body_top = ground - wheel - body_h
    paint = _colour(rng, _pick(rng, _PAINT), 15)
    draw.rectangle([x0, body_top, x0 + length, ground - wheel * 0.6], fill=paint)
    # Cabin: a trapezoid with windows; a van or truck gets a taller, longer one.
    cabin_h = body_h * rng.uniform(0.7, 1.3)
    c0, c1 = x0 + length * rng.uniform(0.15, 0.3), x0 + length * rng.uniform(0.65, 0.85)
    slope = length * 0.08
    draw.polygon(
        [(c0, body_top), (c0 + slope, body_top - cabin_h), (c1 - slope, body_top - cabin_h), (c1, body_top)], fill=paint
    )
    glass = _colour(rng, (120, 160, 190), 30)
    mid = (c0 + c1) / 2
    inset = cabin_h * 0.18
    draw.polygon(
        [
            (c0 + inset, body_top - 1),
            (c0 + slope + inset / 2, body_top - cabin_h + inset),
            (mid - inset / 3, body_top - cabin_h + inset),
            (mid - inset / 3, body_top - 1),
        ],
        fill=glass,
    )
    draw.polygon(
        [
            (mid + inset / 3, body_top - 1),
            (mid + inset / 3, body_top - cabin_h + inset),
            (c1 - slope - inset / 2, body_top - cabin_h + inset),
            (c1 - inset, body_top - 1),
        ],
        fill=glass,
    )
    for wx in (x0 + length * 0.2, x0 + length * 0.8):
        draw.ellipse([wx - wheel, ground - 2 * wheel, wx + wheel, ground], fill=(20, 20, 20))
        draw.ellipse(
            [wx - wheel * 0.45, ground - wheel * 1.45, wx + wheel * 0.45, ground - wheel * 0.55], fill=(160, 160, 165)
        )
    lamp = max(1.0, length * 0.03)
    draw.rectangle([x0, body_top + body_h * 0.2, x0 + lamp, body_top + body_h * 0.45], fill=(250, 240, 180))


def _lighting(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Time of day and sensor: brightness, contrast, colour cast, noise, and sometimes blur."""
    if rng.random() < 0.25:
        image = image.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 1.0) * image.width / 160))
    pixels = np.asarray(image, dtype=np.float32)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.7, 1.2) + mean
    pixels = pixels * rng.uniform(0.5, 1.25) * rng.uniform(0.9, 1.1, size=3)
    pixels += rng.normal(0.0, rng.uniform(1.0, 8.0), size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def render_scene(
    label: str, *, seed: int = 0, index: int = 0, stream: str = "train", size: tuple[int, int] = DATASET_SIZE
) -> Image.Image:
    """Draw one RGB scene of class `label` (one of CLASSES) at `size` (W, H); deterministic."""
    return render_scene_boxes(label, seed=seed, index=index, stream=stream, size=size).image


def render_scene_boxes(
    label: str, *, seed: int = 0, index: int = 0, stream: str = "train", size: tuple[int, int] = DATASET_SIZE
) -> Scene:
    """`render_scene`'s image with the box of the object drawn in it (none for "empty")."""
    if label not in CLASSES:
        raise UsageError(f"unknown scene class {label!r}", f"use one of: {', '.join(CLASSES)}")
    w, h = size
    if w < 16 or h < 16 or w > 4096 or h > 4096:
        raise UsageError(f"image size {w}x{h} is outside 16..4096 pixels per side", "pick a size like 96x72 or 320x240")
    rng = _rng(seed, stream, label, index)
    image, horizon = _background(rng, w, h)
    draw = ImageDraw.Draw(image)
    _clutter(draw, rng, w, h, horizon, int(rng.integers(0, 4)))
    mask = Image.new("L", (w, h), 0)
    traced = _Traced(draw, ImageDraw.Draw(mask))
    if label == "person":
        _person(traced, rng, w, h, horizon)
    elif label == "vehicle":
        _vehicle(traced, rng, w, h, horizon)
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    extent = mask.getbbox()  # None when nothing was drawn
    boxes = (
        ()
        if extent is None
        else (SceneBox(label, extent, (extent[0] / w, extent[1] / h, extent[2] / w, extent[3] / h)),)
    )
    return Scene(_lighting(image, rng), boxes)


def _fresh_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(
            f"{path} already exists and is not an empty directory", f"pass a new or empty directory for the {what}"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_dataset(
    out: Path,
    *,
    per_class: int = 200,
    validation_per_class: int = 50,
    seed: int = 0,
    size: tuple[int, int] = DATASET_SIZE,
) -> dict:
    """Write train/ and validation/ class folders of PNG scenes, each split's boxes.json, and dataset.json; returns dataset.json's content."""
    if per_class < 1 or validation_per_class < 0:
        raise UsageError(
            f"per_class={per_class}, validation_per_class={validation_per_class}",
            "ask for at least 1 training image per class",
        )
    out = _fresh_dir(out, "dataset")
    counts: dict[str, dict[str, int]] = {}
    for split, n in (("train", per_class), ("validation", validation_per_class)):
        if n == 0:
            continue
        counts[split] = {}
        boxes: dict[str, list[dict]] = {}
        for label in CLASSES:
            folder = out / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                scene = render_scene_boxes(label, seed=seed, index=i, stream=split, size=size)
                scene.image.save(folder / f"{label}-{i:05d}.png")
                boxes[f"{label}/{label}-{i:05d}.png"] = [b.as_json() for b in scene.boxes]
            counts[split][label] = n
        split_boxes = {"format_version": DATASET_FORMAT_VERSION, "size": list(size), "images": boxes}
        (out / split / "boxes.json").write_text(json.dumps(split_boxes, indent=1) + "\n")
    meta = {
        "format_version": DATASET_FORMAT_VERSION,
        "generator": "edgefleet.models.scenes",
        "classes": list(CLASSES),
        "seed": seed,
        "size": list(size),
        "counts": counts,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def write_frames(
    out: Path,
    label: str,
    count: int,
    *,
    seed: int = 0,
    start: int = 0,
    size: tuple[int, int] = FRAME_SIZE,
    fmt: str = "jpg",
) -> list[Path]:
    """Write `count` camera frames of class `label` into `out` (the demo agents' input).

    Files are `<label>-<index>.<fmt>` for index start..start+count-1; existing files are never
    overwritten (pass another `start` to add more).
    """
    if fmt not in FRAME_FORMATS:
        raise UsageError(f"unknown frame format {fmt!r}", f"use one of: {', '.join(FRAME_FORMATS)}")
    if count < 1 or start < 0:
        raise UsageError(f"count={count}, start={start}", "ask for at least one frame, from a non-negative start index")
    out = Path(out)
    paths = [out / f"{label}-{i:05d}.{fmt}" for i in range(start, start + count)]
    taken = [p.name for p in paths if p.exists()]
    if taken:
        raise UsageError(
            f"{out} already holds {len(taken)} of these frames (first: {taken[0]})",
            "pass another --start or an empty directory",
        )
    out.mkdir(parents=True, exist_ok=True)
    for i, path in zip(range(start, start + count), paths):
        image = render_scene(label, seed=seed, index=i, stream="frames", size=size)
        image.save(path, FRAME_FORMATS[fmt], **({"quality": 90} if fmt == "jpg" else {}))
    return paths
