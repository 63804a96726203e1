"""Synthetic stand-ins for CamVid and CIFAR-10, generated on the spot.

The demo and the tests must run offline and in seconds, without the real data sets. Both
generators write the real on-disk formats, so the same loaders read synthetic and real data,
and both are built to be *learned* rather than thresholded: every class shares its colour
range with some other class, objects vary in place, size and shape, and illumination, tint
and noise change per image. Output is a pure function of the parameters, and a JSON marker
written last lets repeated runs reuse a finished set while an interrupted one is redone.
"""
from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from data.cifar import CIFAR_CLASSES, CIFAR_FOLDER, META_FILE, TEST_FILE, TRAIN_FILES, read_pickle
from data.camvid import IGNORE_INDEX
from utils.errors import UserError
from utils.io import atomic_open, write_json, write_png

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_COUNTS: Mapping[str, int] = MappingProxyType({"train": 24, "val": 8, "test": 8})
MARKER = ".complete"
# Bump a version whenever the drawing changes, so cached sets on disk are regenerated.
_SCENE_VERSION = 2
_CIFAR_VERSION = 2
_STREAMS = {"train": 0, "val": 1, "test": 2, "unlabeled": 3}

BUILDING, TREE, SKY, CAR, SIGN, ROAD, PEDESTRIAN, FENCE, POLE, SIDEWALK, BICYCLIST = range(11)


# ----------------------------------------------------------------------------- street scenes

def make_street_scenes(
    root: str | Path,
    counts: Mapping[str, int] = DEFAULT_COUNTS,
    unlabeled: int = 24,
    size: tuple[int, int] = (160, 120),
    seed: int = 0,
) -> Path:
    """Write a CamVid-layout street-scene set under `root` (size is width, height); return root.

    Layout: root/{split}/NAME.png (RGB), root/{split}_labels/NAME.png (uint8 class indices,
    IGNORE_INDEX for Void) and root/unlabeled/train/NAME.png (RGB frames without labels).
    """
    root = Path(root)
    params = _scene_params(counts, unlabeled, size, seed)
    if _marker_matches(root / MARKER, params):
        return root
    folders = [root / s for s in SPLITS] + [root / f"{s}_labels" for s in SPLITS]
    _forget_previous(root / MARKER, [*folders, root / "unlabeled" / "train"], "synth_*.png")
    for split, count in counts.items():
        for index in range(count):
            image, label = render_street_scene(size, _scene_rng(seed, split, index))
            name = f"synth_{split}_{index:04d}.png"
            write_png(root / split / name, image)
            write_png(root / f"{split}_labels" / name, label)
    for index in range(unlabeled):
        image, _ = render_street_scene(size, _scene_rng(seed, "unlabeled", index))
        write_png(root / "unlabeled" / "train" / f"synth_unl_{index:04d}.png", image)
    write_json(root / MARKER, params)
    return root


def render_street_scene(
    size: tuple[int, int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One scene as an (H, W, 3) uint8 picture and its (H, W) uint8 label map."""
    canvas = _Canvas(size, rng)
    street = _Street(canvas, rng)
    _draw_sky(canvas, street)
    _draw_ground(canvas, street)
    _draw_buildings(canvas, street)
    _draw_fence(canvas, street)
    _draw_road(canvas, street)
    for _, draw in sorted(_actors(canvas, street), key=lambda actor: actor[0]):
        draw()
    _draw_void_patch(canvas)
    return _photograph(canvas), canvas.label


def _scene_params(
    counts: Mapping[str, int], unlabeled: int, size: tuple[int, int], seed: int
) -> dict[str, Any]:
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"counts may only name the splits {SPLITS}, got {sorted(unknown)}")
    numbers = [*counts.values(), unlabeled, seed]
    if any(not isinstance(n, int) or n < 0 for n in numbers):
        raise ValueError(f"counts, unlabeled and seed must be non-negative integers, got {numbers}")
    width, height = size
    if width < 32 or height < 32:
        raise ValueError(f"size (width, height) must be at least (32, 32), got {size}")
    return {"kind": "street_scenes", "version": _SCENE_VERSION, "counts": dict(counts),
            "unlabeled": unlabeled, "size": [width, height], "seed": seed}


def _scene_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    """Each image gets its own stream, so image i is the same whatever the other counts are."""
    return np.random.default_rng([seed, _STREAMS[stream], index])


class _Canvas:
    """A picture and its label map painted together: a pixel's label is whatever was painted last."""

    def __init__(self, size: tuple[int, int], rng: np.random.Generator) -> None:
        self.width, self.height = size
        self.rng = rng
        self.y = np.arange(self.height, dtype=np.float32)[:, None]
        self.x = np.arange(self.width, dtype=np.float32)[None, :]
        self.image = np.zeros((self.height, self.width, 3), np.float32)
        self.label = np.full((self.height, self.width), IGNORE_INDEX, np.uint8)
        # Twice the picture's size, so each painted object reads the noise at its own offset.
        self._grain = rng.normal(size=(2 * self.height, 2 * self.width)).astype(np.float32)
        cell = max(3, self.height // 16)
        self._blotch = _smooth_noise(rng, (), 2 * self.height, 2 * self.width, cell)

    def texture(self) -> np.ndarray:
        """An (H, W) noise field mixing fine grain and blotches, different for every call."""
        top = self.rng.integers(self.height)
        left = self.rng.integers(self.width)
        window = (slice(top, top + self.height), slice(left, left + self.width))
        return self._blotch[window] + 0.5 * self._grain[window]

    def paint(self, mask: np.ndarray, cls: int, colour: np.ndarray, texture: float = 0.0) -> None:
        """Paint `colour` (RGB, or an (H, W, 3) field) with textured variation where mask holds."""
        mask = np.broadcast_to(mask, self.label.shape)
        base = colour[mask] if colour.ndim == 3 else colour
        self.image[mask] = base + texture * self.texture()[mask][:, None]
        self.label[mask] = cls

    def rect(self, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
        return (self.x >= x0) & (self.x < x1) & (self.y >= y0) & (self.y < y1)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.x - cx) / max(rx, 0.5)) ** 2 + ((self.y - cy) / max(ry, 0.5)) ** 2 <= 1.0

    def scale(self) -> float:
        """Sizes are given for a 120-pixel-high picture and scale with the real height."""
        return self.height / 120.0


class _Street:
    """The perspective of a straight street: horizon, vanishing point, road and kerb lines."""

    def __init__(self, canvas: _Canvas, rng: np.random.Generator) -> None:
        self.height = canvas.height
        self.horizon = canvas.height * rng.uniform(0.36, 0.5)
        self.vanish_x = canvas.width * rng.uniform(0.35, 0.65)
        self.road_top = rng.uniform(0.5, 2.0) * canvas.scale()
        self.road_bottom = canvas.width * rng.uniform(0.3, 0.55)
        self.side_factor = rng.uniform(1.35, 1.8)

    def depth(self, y: np.ndarray | float) -> np.ndarray:
        """0 at the horizon, 1 at the bottom edge: how near the ground at row y is."""
        return np.clip((y - self.horizon) / (self.height - self.horizon), 0.0, 1.0)

    def road_half(self, y: np.ndarray | float) -> np.ndarray:
        return self.road_top + (self.road_bottom - self.road_top) * self.depth(y)

    def side_half(self, y: np.ndarray | float) -> np.ndarray:
        return self.road_half(y) * self.side_factor

    def row(self, depth: np.ndarray | float) -> np.ndarray | float:
        return self.horizon + depth * (self.height - self.horizon)

    def kerb_depth(self, x: np.ndarray) -> np.ndarray:
        """Depth at which the outer sidewalk edge passes column x (negative above the horizon)."""
        reach = np.abs(x - self.vanish_x) / self.side_factor
        return (reach - self.road_top) / (self.road_bottom - self.road_top)

    def on_road(self, rng: np.random.Generator, depth: float, spread: float) -> float:
        """A column on the road at `depth`, at most `spread` half-widths from the middle."""
        return self.vanish_x + rng.uniform(-spread, spread) * float(self.road_half(self.row(depth)))

    def on_sidewalk(self, rng: np.random.Generator, depth: float) -> float:
        """A column on the left or right sidewalk at `depth`."""
        y = self.row(depth)
        inner, outer = float(self.road_half(y)), float(self.side_half(y))
        across = inner + rng.uniform(0.15, 0.9) * (outer - inner)
        return self.vanish_x + rng.choice([-1.0, 1.0]) * across


_SKIES = np.array([[70, 125, 200], [175, 180, 188], [140, 150, 175], [110, 150, 205]], np.float32)
_WALLS = np.array([[150, 70, 50], [200, 180, 140], [130, 130, 135], [215, 212, 205],
                   [85, 78, 70], [160, 120, 90], [120, 140, 150]], np.float32)
_PAVEMENTS = np.array([[150, 150, 148], [160, 112, 100], [178, 168, 146], [110, 110, 112]],
                      np.float32)
_FOLIAGE = np.array([[55, 95, 40], [90, 120, 50], [40, 78, 48], [110, 110, 60], [70, 90, 70]],
                    np.float32)
_BARK = np.array([[85, 62, 42]], np.float32)
_WOOD_AND_METALS = np.array([[120, 85, 55], [120, 120, 120], [60, 62, 65], [40, 70, 50],
                             [170, 170, 165]], np.float32)
_VEHICLES = np.array([[220, 220, 222], [160, 162, 165], [35, 35, 40], [170, 30, 30], [40, 60, 140],
                      [40, 90, 60], [215, 180, 40], [120, 100, 80]], np.float32)
_METALS = np.array([[120, 120, 120], [60, 62, 65], [40, 70, 50], [170, 170, 165]], np.float32)
_SKINS = np.array([[225, 190, 160], [190, 140, 105], [120, 85, 60], [80, 55, 40]], np.float32)


def _pick(rng: np.random.Generator, palette: np.ndarray, jitter: float = 12.0) -> np.ndarray:
    return palette[rng.integers(len(palette))] + rng.normal(0.0, jitter, 3).astype(np.float32)


def _count(rng: np.random.Generator, chance: float, most: int) -> int:
    """How many of an object to draw: none with probability 1 - chance, else 1..most."""
    return int(rng.integers(1, most + 1)) if rng.random() < chance else 0


def _draw_sky(canvas: _Canvas, street: _Street) -> None:
    rng = canvas.rng
    zenith = _pick(rng, _SKIES, 15)
    near_horizon = zenith + rng.uniform(20, 60)
    blend = np.clip(canvas.y / street.horizon, 0, 1)[..., None]
    gradient = np.broadcast_to(zenith + (near_horizon - zenith) * blend, canvas.image.shape)
    canvas.paint(np.ones_like(canvas.label, bool), SKY, gradient, texture=rng.uniform(6, 18))


def _draw_ground(canvas: _Canvas, street: _Street) -> None:
    """Paving everywhere below the horizon; buildings and road cover it afterwards."""
    rng = canvas.rng
    colour = _pick(rng, _PAVEMENTS)
    ground = canvas.y > street.horizon
    canvas.paint(ground, SIDEWALK, colour, texture=8)
    tile = rng.uniform(5, 9) * canvas.scale()
    rows_from_horizon = (canvas.y - street.horizon) * (1 + street.depth(canvas.y))
    joints = ((canvas.x % tile) < 1) | (rows_from_horizon % tile < 1)
    canvas.paint(ground & joints, SIDEWALK, colour * 0.75, texture=6)


def _draw_buildings(canvas: _Canvas, street: _Street) -> None:
    """Facades along the horizon that continue, in perspective, outside the sidewalk."""
    rng = canvas.rng
    left = -rng.uniform(0, 0.2) * canvas.width
    while left < canvas.width:
        right = left + canvas.width * rng.uniform(0.12, 0.32)
        if rng.random() < 0.85:
            _draw_building(canvas, street, left, right)
        left = right


def _draw_building(canvas: _Canvas, street: _Street, left: float, right: float) -> None:
    rng = canvas.rng
    top = street.horizon - canvas.height * rng.uniform(0.08, 0.42)
    outside_street = np.abs(canvas.x - street.vanish_x) >= street.side_half(canvas.y)
    facade = canvas.rect(left, right, top, canvas.height)
    facade &= (canvas.y <= street.horizon) | outside_street
    wall = _pick(rng, _WALLS, 15)
    canvas.paint(facade, BUILDING, wall, texture=rng.uniform(5, 14))
    pitch_x, pitch_y = rng.uniform(5, 11, 2) * canvas.scale()
    open_x, open_y = rng.uniform(0.35, 0.65, 2)
    columns = (canvas.x - left) % pitch_x < open_x * pitch_x
    windows = columns & ((canvas.y - top) % pitch_y < open_y * pitch_y)
    glass = np.array([40, 48, 62], np.float32) if rng.random() < 0.6 else wall * 0.5 + 70
    canvas.paint(facade & windows & (canvas.y < street.horizon - 2), BUILDING, glass, texture=10)


def _draw_fence(canvas: _Canvas, street: _Street) -> None:
    """Slats and rails standing on the outer sidewalk edge of one side, shrinking with distance."""
    rng = canvas.rng
    if rng.random() > 0.75:
        return
    side = rng.choice([-1.0, 1.0])
    far = rng.uniform(0.05, 0.45)
    near = far + rng.uniform(0.25, 0.6)
    depth = street.kerb_depth(canvas.x)
    tall = (rng.uniform(0.12, 0.3) * canvas.height) * depth + 1.5
    columns = (np.sign(canvas.x - street.vanish_x) == side) & (depth >= far) & (depth <= near)
    rise = (street.row(depth) - canvas.y) / tall
    pitch = 1.5 + 5 * depth * canvas.scale()
    slats = (canvas.x % pitch) < 0.5 * pitch
    rails = (np.abs(rise - 0.25) < 0.1) | (np.abs(rise - 0.85) < 0.1)
    fence = columns & (rise >= 0) & (rise <= 1) & (slats | rails)
    canvas.paint(fence, FENCE, _pick(rng, _WOOD_AND_METALS, 15), texture=8)


def _draw_road(canvas: _Canvas, street: _Street) -> None:
    rng = canvas.rng
    half = street.road_half(canvas.y)
    offset = np.abs(canvas.x - street.vanish_x)
    below = canvas.y > street.horizon
    canvas.paint(below & (offset >= half) & (offset < 1.07 * half), SIDEWALK,
                 _pick(rng, _PAVEMENTS[:1], 10) + 30, texture=6)  # the kerb stone
    grey = rng.uniform(60, 125) + rng.normal(0, 6, 3).astype(np.float32)
    canvas.paint(below & (offset < half), ROAD, grey, texture=rng.uniform(5, 12))
    paint = np.array([225, 222, 210] if rng.random() < 0.7 else [215, 185, 70], np.float32)
    width = 0.025 * half + 0.35
    centre = street.vanish_x + rng.uniform(-0.3, 0.3) * half
    distance = rng.uniform(15, 40) * canvas.scale() / (canvas.y - street.horizon + 1)
    dashes = (np.abs(canvas.x - centre) < width) & ((distance % 1.0) < 0.5)
    edges = np.abs(offset - 0.92 * half) < width
    canvas.paint(below & (dashes | edges), ROAD, paint, texture=8)


def _actors(canvas: _Canvas, street: _Street) -> list[tuple[float, Callable[[], None]]]:
    """Objects standing on the ground, as (foot row, draw) so that nearer ones are drawn last."""
    rng = canvas.rng
    actors: list[tuple[float, Callable[[], None]]] = []
    makers = ((_tree, 0.85, 3), (_car, 0.9, 4), (_pedestrian, 0.85, 4), (_bicyclist, 0.75, 2),
              (_pole, 0.9, 3))
    for maker, chance, most in makers:
        for _ in range(_count(rng, chance, most)):
            actors.append(maker(canvas, street, rng.uniform(0.08, 0.95)))
    return actors


def _tree(canvas: _Canvas, street: _Street, depth: float) -> tuple[float, Callable[[], None]]:
    rng = canvas.rng
    x, foot = street.on_sidewalk(rng, depth), street.row(depth)
    radius = canvas.height * (0.05 + 0.18 * depth) * rng.uniform(0.8, 1.3)
    trunk_top = foot - radius * rng.uniform(1.0, 2.0)

    def draw() -> None:
        trunk = canvas.rect(x - 0.12 * radius, x + 0.12 * radius, trunk_top - radius, foot)
        canvas.paint(trunk, TREE, _pick(canvas.rng, _BARK), texture=10)
        crown = np.zeros_like(canvas.label, bool)
        centre_y = trunk_top - radius
        for dx, dy, r in canvas.rng.uniform([-0.6, -0.5, 0.5], [0.6, 0.3, 0.85], (5, 3)):
            crown |= canvas.ellipse(x + dx * radius, centre_y + dy * radius, r * radius, 0.9 * r * radius)
        canvas.paint(crown, TREE, _pick(canvas.rng, _FOLIAGE, 12), texture=canvas.rng.uniform(18, 30))

    return foot, draw


def _car(canvas: _Canvas, street: _Street, depth: float) -> tuple[float, Callable[[], None]]:
    rng = canvas.rng
    x, foot = street.on_road(rng, depth, 0.75), street.row(depth)
    width = canvas.width * (0.05 + 0.33 * depth) * rng.uniform(0.85, 1.15)
    height = width * rng.uniform(0.6, 0.8)

    def draw() -> None:
        wheel = 0.13 * width
        body_top = foot - 0.55 * height
        body = canvas.rect(x - width / 2, x + width / 2, body_top, foot - 0.5 * wheel)
        lean = np.clip((canvas.y - (foot - height)) / (0.45 * height), 0, 1)
        cabin = (np.abs(canvas.x - x) <= (0.3 + 0.12 * lean) * width) & (canvas.y < body_top)
        cabin &= canvas.y >= foot - height
        wheels = canvas.ellipse(x - 0.32 * width, foot - wheel, wheel, wheel)
        wheels |= canvas.ellipse(x + 0.32 * width, foot - wheel, wheel, wheel)
        whole = body | cabin | wheels
        _void_outline(canvas, whole, 0.4)
        canvas.paint(wheels, CAR, np.array([25, 25, 28], np.float32), texture=5)
        canvas.paint(body | cabin, CAR, _pick(canvas.rng, _VEHICLES, 15), texture=6)
        glass = cabin & (canvas.y > foot - 0.92 * height)
        glass &= np.abs(canvas.x - x) <= (0.24 + 0.12 * lean) * width
        canvas.paint(glass, CAR, np.array([55, 65, 80], np.float32), texture=10)
        lamps = canvas.rect(x - 0.47 * width, x + 0.47 * width, body_top + 0.12 * height,
                            body_top + 0.2 * height)
        lamps &= np.abs(canvas.x - x) > 0.33 * width
        canvas.paint(lamps, CAR, np.array([200, 40, 30], np.float32), texture=10)

    return foot, draw


def _pedestrian(canvas: _Canvas, street: _Street, depth: float) -> tuple[float, Callable[[], None]]:
    rng = canvas.rng
    crossing = rng.random() < 0.2
    x = street.on_road(rng, depth, 0.9) if crossing else street.on_sidewalk(rng, depth)
    foot = street.row(depth)
    tall = canvas.height * (0.08 + 0.4 * depth) * rng.uniform(0.85, 1.15)

    def draw() -> None:
        w, stride = 0.26 * tall, canvas.rng.uniform(0, 0.12) * tall
        head = canvas.ellipse(x, foot - 0.91 * tall, 0.075 * tall, 0.09 * tall)
        torso = canvas.rect(x - w / 2, x + w / 2, foot - 0.82 * tall, foot - 0.45 * tall)
        arms = canvas.rect(x - 0.65 * w, x + 0.65 * w, foot - 0.8 * tall, foot - 0.5 * tall) & ~torso
        legs = canvas.rect(x - 0.45 * w - stride, x - 0.05 * w, foot - 0.45 * tall, foot)
        legs |= canvas.rect(x + 0.05 * w, x + 0.45 * w + stride, foot - 0.45 * tall, foot)
        _void_outline(canvas, head | torso | arms | legs, 0.3)
        shirt = canvas.rng.uniform(20, 230, 3).astype(np.float32)
        canvas.paint(legs, PEDESTRIAN, _pick(canvas.rng, _VEHICLES[[1, 2, 4, 7]], 15), texture=10)
        canvas.paint(torso | arms, PEDESTRIAN, shirt, texture=12)
        canvas.paint(head, PEDESTRIAN, _pick(canvas.rng, _SKINS, 10), texture=6)

    return foot, draw


def _bicyclist(canvas: _Canvas, street: _Street, depth: float) -> tuple[float, Callable[[], None]]:
    rng = canvas.rng
    y = street.row(depth)
    x = street.vanish_x + rng.choice([-1.0, 1.0]) * rng.uniform(0.55, 0.9) * float(street.road_half(y))
    r = canvas.height * (0.08 + 0.42 * depth) * rng.uniform(0.85, 1.15) * 0.2

    def draw() -> None:
        thick = max(0.7, 0.2 * r)
        wheels = np.zeros_like(canvas.label, bool)
        for cx in (x - 1.3 * r, x + 1.3 * r):
            wheels |= np.abs(np.hypot(canvas.x - cx, canvas.y - (y - r)) - r) < thick
        frame = canvas.rect(x - 1.3 * r, x + 1.3 * r, y - 1.25 * r - thick, y - 1.25 * r + thick)
        frame |= canvas.rect(x - thick, x + thick, y - 1.8 * r, y - r)
        body = canvas.ellipse(x + 0.15 * r, y - 2.5 * r, 0.38 * r, 0.85 * r)
        legs = canvas.rect(x - 0.22 * r, x + 0.22 * r, y - 1.9 * r, y - 0.6 * r)
        head = canvas.ellipse(x + 0.3 * r, y - 3.6 * r, 0.33 * r, 0.38 * r)
        _void_outline(canvas, wheels | frame | body | legs | head, 0.3)
        canvas.paint(wheels | frame, BICYCLIST, _pick(canvas.rng, _METALS, 15), texture=6)
        canvas.paint(legs, BICYCLIST, _pick(canvas.rng, _VEHICLES, 15), texture=8)
        canvas.paint(body, BICYCLIST, canvas.rng.uniform(20, 230, 3).astype(np.float32), texture=12)
        canvas.paint(head, BICYCLIST, _pick(canvas.rng, _SKINS, 10), texture=6)

    return y, draw


def _pole(canvas: _Canvas, street: _Street, depth: float) -> tuple[float, Callable[[], None]]:
    rng = canvas.rng
    x, foot = street.on_sidewalk(rng, depth), street.row(depth)
    tall = canvas.height * (0.2 + 0.6 * depth) * rng.uniform(0.8, 1.2)
    half_width = 0.5 * max(1.0, canvas.width * (0.004 + 0.012 * depth))
    signed = rng.random() < 0.8

    def draw() -> None:
        pole = canvas.rect(x - half_width, x + half_width, foot - tall, foot)
        canvas.paint(pole, POLE, _pick(canvas.rng, _METALS, 12), texture=6)
        if signed:
            height = foot - tall * canvas.rng.uniform(0.75, 0.95)
            _draw_sign(canvas, x, height, canvas.height * (0.018 + 0.05 * depth))

    return foot, draw


def _draw_sign(canvas: _Canvas, x: float, y: float, r: float) -> None:
    """A traffic sign or light: a small shape whose colour alone does not give it away."""
    rng, r = canvas.rng, max(r, 1.5)
    kind = rng.integers(4)
    if kind == 0:  # round prohibition sign: red ring around white
        canvas.paint(canvas.ellipse(x, y, r, r), SIGN, np.array([200, 30, 35], np.float32), texture=8)
        inner = canvas.ellipse(x, y, 0.65 * r, 0.65 * r)
        canvas.paint(inner, SIGN, np.array([230, 230, 230], np.float32), texture=8)
    elif kind == 1:  # warning triangle
        inside = (canvas.y <= y + 0.8 * r) & (np.abs(canvas.x - x) <= (canvas.y - (y - r)) * 0.6)
        canvas.paint(inside, SIGN, np.array([235, 200, 40], np.float32), texture=8)
    elif kind == 2:  # rectangular information sign
        colour = _pick(rng, np.array([[30, 70, 160], [30, 120, 60], [225, 225, 225]], np.float32))
        canvas.paint(canvas.rect(x - 1.2 * r, x + 1.2 * r, y - 0.8 * r, y + 0.8 * r), SIGN, colour, texture=8)
    else:  # traffic light: dark housing with one lit lamp
        canvas.paint(canvas.rect(x - 0.6 * r, x + 0.6 * r, y - 1.6 * r, y + 1.6 * r), SIGN,
                     np.array([30, 32, 30], np.float32), texture=5)
        lamp = rng.integers(3)
        colour = np.array([[230, 40, 30], [240, 170, 30], [40, 220, 90]][lamp], np.float32)
        canvas.paint(canvas.ellipse(x, y + (lamp - 1) * r, 0.4 * r, 0.4 * r), SIGN, colour, texture=5)


def _void_outline(canvas: _Canvas, mask: np.ndarray, chance: float) -> None:
    """Mark a one-pixel rim around an object as Void, as CamVid's annotators did at unsure borders."""
    if canvas.rng.random() < chance:
        grown = mask.copy()
        grown[1:] |= mask[:-1]
        grown[:-1] |= mask[1:]
        grown[:, 1:] |= mask[:, :-1]
        grown[:, :-1] |= mask[:, 1:]
        canvas.label[grown & ~mask] = IGNORE_INDEX


def _draw_void_patch(canvas: _Canvas) -> None:
    """A small unidentifiable thing (a bin, a bag, clutter) that belongs to no class."""
    rng = canvas.rng
    if rng.random() < 0.6:
        r = canvas.height * rng.uniform(0.02, 0.06)
        centre = rng.uniform(0, canvas.width), rng.uniform(0.5, 1.0) * canvas.height
        blob = canvas.ellipse(*centre, r * rng.uniform(0.6, 1.6), r)
        canvas.paint(blob, IGNORE_INDEX, rng.uniform(20, 230, 3).astype(np.float32), texture=15)


def _photograph(canvas: _Canvas) -> np.ndarray:
    """Camera effects: exposure, white balance, uneven light, a cast shadow and sensor noise."""
    rng = canvas.rng
    gain = rng.uniform(0.65, 1.3) * (1 + rng.normal(0, 0.07, 3)).astype(np.float32)
    light = 1 + 0.12 * _smooth_noise(rng, (), canvas.height, canvas.width, max(8, canvas.height // 3))
    if rng.random() < 0.5:
        angle = rng.uniform(0, 2 * np.pi)
        cx, cy = rng.uniform(0, canvas.width), rng.uniform(0.4, 1.0) * canvas.height
        shadow = (canvas.x - cx) * np.cos(angle) + (canvas.y - cy) * np.sin(angle) > 0
        shadow &= canvas.y > cy - 0.2 * canvas.height
        light = light * np.where(shadow, rng.uniform(0.55, 0.8), 1.0)
    noise = rng.normal(0, rng.uniform(2, 9), canvas.image.shape)
    noisy = canvas.image * light[..., None] * gain + noise
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _smooth_noise(
    rng: np.random.Generator, batch: tuple[int, ...], height: int, width: int, cell: int
) -> np.ndarray:
    """Bilinearly upsampled Gaussian noise, about N(0, 1) per pixel: blotches, clouds, uneven light."""
    grid = rng.normal(size=(*batch, height // cell + 2, width // cell + 2)).astype(np.float32)
    fy = np.arange(height, dtype=np.float32) / cell
    fx = np.arange(width, dtype=np.float32) / cell
    y0, x0 = fy.astype(np.intp), fx.astype(np.intp)
    wy, wx = (fy - y0)[:, None], fx - x0
    rows0, rows1 = grid[..., y0, :], grid[..., y0 + 1, :]
    top = rows0[..., x0] * (1 - wx) + rows0[..., x0 + 1] * wx
    bottom = rows1[..., x0] * (1 - wx) + rows1[..., x0 + 1] * wx
    return top * (1 - wy) + bottom * wy


# ----------------------------------------------------------------------------- CIFAR-like

def make_cifar_like(root: str | Path, n_train: int = 5000, n_test: int = 1000, seed: int = 0) -> Path:
    """Write a learnable 10-class set as root/cifar-10-batches-py/ in the real format; return root.

    Class k is shape k // 2 (disc, square, triangle, ring, cross) in colour family k % 2 (warm or
    cool), placed, sized, rotated and lit at random over a cluttered background, so a small CNN
    has to learn shape and colour together. The marker lives inside the batches folder.
    """
    root = Path(root)
    folder = root / CIFAR_FOLDER
    params = _cifar_params(n_train, n_test, seed)
    if _marker_matches(folder / MARKER, params):
        return root
    _refuse_foreign_cifar(folder)
    (folder / MARKER).unlink(missing_ok=True)
    _write_train_batches(folder, *_cifar_like_split(n_train, seed, _STREAMS["train"]))
    test_rows, test_labels = _cifar_like_split(n_test, seed, _STREAMS["test"])
    test = _cifar_batch(test_rows, test_labels, "synthetic testing batch 1 of 1", first=0)
    _write_pickle(folder / TEST_FILE, test)
    meta = {b"num_cases_per_batch": n_train // len(TRAIN_FILES),
            b"label_names": [name.encode() for name in CIFAR_CLASSES], b"num_vis": 3072}
    _write_pickle(folder / META_FILE, meta)
    write_json(folder / MARKER, params)
    return root


def _cifar_params(n_train: int, n_test: int, seed: int) -> dict[str, Any]:
    numbers = (n_train, n_test, seed)
    if any(not isinstance(n, int) or n < 0 for n in numbers):
        raise ValueError(f"n_train, n_test and seed must be non-negative integers, got {numbers}")
    return {"kind": "cifar_like", "version": _CIFAR_VERSION, "n_train": n_train, "n_test": n_test,
            "seed": seed}


def _write_train_batches(folder: Path, rows: np.ndarray, labels: np.ndarray) -> None:
    """Five nearly equal training batches, like the real data set's 5 x 10000."""
    first = 0
    parts = zip(np.array_split(rows, len(TRAIN_FILES)), np.array_split(labels, len(TRAIN_FILES)))
    for name, (part_rows, part_labels) in zip(TRAIN_FILES, parts):
        title = f"synthetic training batch {name[-1]} of {len(TRAIN_FILES)}"
        _write_pickle(folder / name, _cifar_batch(part_rows, part_labels, title, first))
        first += len(part_labels)


def _refuse_foreign_cifar(folder: Path) -> None:
    """Never overwrite a real CIFAR-10 download: the file names are the same."""
    first = folder / TRAIN_FILES[0]
    if first.is_file() and not _written_here(first):
        raise UserError(f"{folder} holds CIFAR-10 files this generator did not write; refusing to "
                        f"overwrite them: give the synthetic set an empty folder of its own")


def _written_here(batch: Path) -> bool:
    """Recognise this generator's batches by their batch_label; real ones say 'training batch'."""
    try:
        return read_pickle(batch)[b"batch_label"].startswith(b"synthetic")
    except (OSError, pickle.UnpicklingError, EOFError, KeyError, TypeError, AttributeError,
            ValueError):
        return False


def _cifar_like_split(
    count: int, seed: int, stream: int, chunk: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels and their images as CIFAR rows; made in chunks to bound memory."""
    starts = range(0, count, chunk)
    label_seed, *chunk_seeds = np.random.SeedSequence([seed, stream]).spawn(1 + len(starts))
    labels = np.random.default_rng(label_seed).permutation(np.arange(count) % len(CIFAR_CLASSES))
    images = [_render_cifar_chunk(np.random.default_rng(chunk_seed), labels[start:start + chunk])
              for start, chunk_seed in zip(starts, chunk_seeds)]
    pixels = np.concatenate(images) if images else np.zeros((0, 32, 32, 3), np.uint8)
    return pixels.transpose(0, 3, 1, 2).reshape(count, 3072), labels


def _cifar_batch(rows: np.ndarray, labels: np.ndarray, title: str, first: int) -> dict[bytes, Any]:
    names = [f"synthetic_{CIFAR_CLASSES[k]}_{first + i:06d}.png".encode()
             for i, k in enumerate(labels)]
    return {b"batch_label": title.encode(), b"labels": [int(k) for k in labels],
            b"data": np.ascontiguousarray(rows), b"filenames": names}


def _write_pickle(path: Path, obj: Any) -> None:
    with atomic_open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _render_cifar_chunk(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) uint8 pictures: background clutter, the class's shape, sometimes an occluder."""
    n = len(labels)
    canvas = _cifar_background(rng, n)
    canvas = _add_clutter(rng, canvas, chance=0.5)
    canvas = _add_clutter(rng, canvas, chance=0.5)
    alpha = _soft(_shape_distance(labels // 2, *_placement(rng, n, 4.5, 10.0)))
    colour = _family_colour(rng, labels % 2)[:, None, None, :]
    shading = 1 + 0.25 * _smooth_noise(rng, (n,), 32, 32, 6)[..., None]
    canvas = _blend(canvas, colour * shading, alpha)
    canvas = _add_clutter(rng, canvas, chance=0.25)
    return _cifar_camera(rng, canvas)


def _cifar_background(rng: np.random.Generator, n: int) -> np.ndarray:
    base = _hsv_to_rgb(rng.random(n), rng.uniform(0, 0.6, n), rng.uniform(0.15, 0.9, n))
    rows = np.linspace(-1, 1, 32, dtype=np.float32)[None, :, None, None]
    slope = rng.normal(0, 0.15, (n, 1, 1, 1)) * rows
    blotch = 0.12 * _smooth_noise(rng, (n,), 32, 32, 8)[..., None]
    return np.clip(base[:, None, None, :] + slope + blotch, 0, 1).astype(np.float32)


def _add_clutter(rng: np.random.Generator, canvas: np.ndarray, chance: float) -> np.ndarray:
    """A small shape of any kind and colour in some pictures, so that no single blob is the answer."""
    n = len(canvas)
    present = (rng.random(n) < chance).astype(np.float32)[:, None, None]
    alpha = _soft(_shape_distance(rng.integers(0, 5, n), *_placement(rng, n, 1.5, 4.0)))
    colour = _hsv_to_rgb(rng.random(n), rng.uniform(0.2, 1, n), rng.uniform(0.2, 1, n))
    return _blend(canvas, colour[:, None, None, :], alpha * present)


def _cifar_camera(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Exposure, offset and sensor noise that differ per picture."""
    n = len(canvas)
    exposure = rng.uniform(0.7, 1.3, (n, 1, 1, 1)).astype(np.float32)
    offset = rng.normal(0, 0.08, (n, 1, 1, 1)).astype(np.float32)
    sigma = rng.uniform(3, 12, (n, 1, 1, 1)).astype(np.float32)
    noise = rng.standard_normal(canvas.shape, dtype=np.float32) * sigma
    noisy = 255 * (canvas * exposure + offset) + noise
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _placement(
    rng: np.random.Generator, n: int, small: float, large: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotated, centred pixel coordinates (u, v) and a size for n randomly placed shapes."""
    grid = np.arange(32, dtype=np.float32) + 0.5
    cx, cy = rng.uniform(7, 25, (2, n, 1, 1)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, (n, 1, 1)).astype(np.float32)
    cos, sin = np.cos(angle), np.sin(angle)
    dx, dy = grid[None, None, :] - cx, grid[None, :, None] - cy
    size = rng.uniform(small, large, (n, 1, 1)).astype(np.float32)
    return dx * cos + dy * sin, dy * cos - dx * sin, size


def _shape_distance(kinds: np.ndarray, u: np.ndarray, v: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Signed distance in pixels (negative inside) to shape kinds[i] for every picture i."""
    radius = np.hypot(u, v)
    au, av = np.abs(u), np.abs(v)
    half = np.float32(np.sqrt(3) / 2)
    disc = radius - size
    square = np.maximum(au, av) - 0.85 * size
    triangle = np.maximum(np.maximum(v, -half * u - 0.5 * v), half * u - 0.5 * v) - 0.5 * size
    ring = np.abs(radius - 0.75 * size) - 0.25 * size
    cross = np.minimum(np.maximum(au - size, av - 0.3 * size), np.maximum(au - 0.3 * size, av - size))
    shapes = (disc, square, triangle, ring, cross)
    return np.choose(kinds[:, None, None], shapes)


def _soft(distance: np.ndarray) -> np.ndarray:
    """Antialiased coverage: a one-pixel ramp across the edge."""
    return np.clip(0.5 - distance, 0, 1)


def _blend(canvas: np.ndarray, colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    return canvas + (colour - canvas) * alpha[..., None]


def _family_colour(rng: np.random.Generator, families: np.ndarray) -> np.ndarray:
    """Warm (red to yellow) or cool (cyan to violet) hues; saturation and value vary widely."""
    n = len(families)
    hue = np.where(families == 0, rng.uniform(-0.06, 0.16, n), rng.uniform(0.47, 0.75, n)) % 1.0
    return _hsv_to_rgb(hue, rng.uniform(0.35, 1, n), rng.uniform(0.3, 1, n))


def _hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """(n,) HSV in [0, 1] to (n, 3) RGB in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + hue[:, None] * 6) % 6
    rgb = value[:, None] * (1 - saturation[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1))
    return rgb.astype(np.float32)


# ----------------------------------------------------------------------------- markers

def _marker_matches(marker: Path, params: dict[str, Any]) -> bool:
    try:
        return json.loads(marker.read_text()) == params
    except (OSError, ValueError):
        return False


def _forget_previous(marker: Path, folders: list[Path], pattern: str) -> None:
    """Drop the marker first, so that an interrupted rewrite is never taken for a finished set,
    then the files of an earlier set, which the new parameters might not all overwrite."""
    marker.unlink(missing_ok=True)
    for folder in folders:
        for stale in folder.glob(pattern):
            stale.unlink()
