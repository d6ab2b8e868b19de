"""SynthFaces: procedurally drawn face identities, the project's embedded default dataset.

Every identity is a set of shape/colour parameters grouped by facial region; every image of it
adds a per-image variation (pose, scale, lighting, expression, noise).  Rendering is a pure
function of both, so "one-region pairs" (same variation, one region's parameters taken from
another identity) give exact ground truth for where two faces differ.  Coordinates below are in
the 112-px frame of an ArcFace-aligned crop (eyes near y=52, mouth near y=92).
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
import struct
import zlib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from xcos.errors import ConfigError, DataError
from xcos.io_utils import atomic_folder, read_manifest

GENERATOR_VERSION = 2  # bump whenever drawing or sampling changes, so cached sets are rebuilt
REGIONS = ("eyes", "nose", "mouth", "brows")
DEFAULT_IDENTITIES: Mapping[str, int] = MappingProxyType({"train": 160, "val": 40, "test": 40})

log = logging.getLogger("xcos.data.synthfaces")

_SS = 2  # supersampling factor: draw at 2x, box-downsample for cheap antialiasing
_CENTRE = np.array([56.0, 60.0])  # rotation/scale pivot, between eyes and mouth

_HAIR = [
    (20, 17, 15),
    (55, 35, 22),
    (105, 70, 40),
    (150, 85, 40),
    (205, 170, 100),
    (150, 148, 145),
    (120, 40, 20),
    (230, 222, 205),
]
_IRIS = [(90, 55, 30), (45, 30, 20), (70, 110, 170), (80, 120, 70), (120, 130, 140), (130, 100, 50)]


@dataclasses.dataclass(frozen=True)
class Identity:
    """Identity parameters, one dict per part; REGIONS name the swappable parts."""

    face: dict[str, Any]
    hair: dict[str, Any]
    extras: dict[str, Any]
    eyes: dict[str, Any]
    brows: dict[str, Any]
    nose: dict[str, Any]
    mouth: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Variation:
    """Per-image nuisance parameters (pose, lighting, expression, noise)."""

    angle: float
    scale: float
    dx: float
    dy: float
    yaw: float
    brightness: float
    contrast: float
    light_angle: float
    light_strength: float
    gains: tuple[float, float, float]
    background: tuple[float, float, float]
    smile: float
    mouth_open: float
    eye_open: float
    noise_sigma: float
    noise_seed: int


def _colour(rng: np.random.Generator, palette: list, jitter: float) -> tuple[float, ...]:
    """Random blend of two palette colours plus jitter: continuous, so identities rarely tie."""
    a, b = rng.choice(len(palette), 2)
    mix = np.array(palette[a]) * (1 - (t := rng.uniform(0, 0.5))) + np.array(palette[b]) * t
    return tuple(np.clip(mix + rng.normal(0, jitter, 3), 0, 255).tolist())


def sample_identity(rng: np.random.Generator) -> Identity:
    """Draw one identity; ranges are wide so that identities are visibly distinct."""
    u = rng.uniform
    t = u(0, 1)  # skin darkness
    undertone = np.array([1.0, 0.0, -0.6]) * rng.normal(0, 8)  # warm/cool, not green
    skin = np.array([250, 214, 186]) * (1 - t) + np.array([86, 56, 38]) * t + undertone
    hair = _colour(rng, _HAIR, 8)
    face = {
        "w": u(35, 45),
        "h": u(47, 56),
        "cy": u(58, 63),
        "jaw": u(0.1, 0.45),
        "chin": u(1.3, 3.0),
        "skin": tuple(np.clip(skin, 0, 255).tolist()),
    }
    hair_p = {
        "colour": hair,
        "line": u(14, 30),
        "peak": u(0, 8) * (u() < 0.4),
        "recede": u(0, 9) * (u() < 0.4),
        "slant": u(-7, 7),
        "side": u(4, 14),
        "vol": u(1, 9),
        "length": u(45, 112),
        "bald": bool(u() < 0.08),
    }
    extras = {
        "ear_y": u(52, 62),
        "ear_w": u(4, 7),
        "ear_h": u(8, 12),
        "glasses": bool(u() < 0.2),
        "g_colour": _colour(rng, _HAIR, 30),
        "g_w": u(10, 13),
        "g_h": u(7, 10),
        "g_sp": u(17, 20),
        "g_y": u(50, 54),
    }
    eyes = {
        "sp": u(15, 21),
        "y": u(49, 55),
        "w": u(5, 8.5),
        "h": u(2.4, 4.2),
        "tilt": u(-9, 9),
        "iris": u(0.45, 0.8),
        "colour": _colour(rng, _IRIS, 12),
    }
    brows = {
        "x": u(14, 22),
        "y": u(33, 41),
        "len": u(7, 11),
        "thick": u(1.4, 4.2),
        "angle": u(-14, 14),
        "arch": u(0, 3.5),
        "colour": tuple((np.array(hair) * u(0.5, 0.9)).tolist()),
    }
    nose = {
        "top": u(50, 58),
        "tip": u(68, 79),
        "w": u(5, 10.5),
        "nostril": u(1.2, 2.8),
        "shade": u(0.78, 0.93),
        "tip_r": u(2.5, 5),
    }
    lips = np.array(face["skin"]) * [0.85, 0.55, 0.55] + [u(10, 60), 0, u(0, 25)]
    mouth = {
        "y": u(87, 96),
        "w": u(10, 17.5),
        "upper": u(1.4, 4.0),
        "lower": u(2.0, 5.5),
        "colour": tuple(np.clip(lips + rng.normal(0, 10, 3), 0, 255).tolist()),
    }
    return Identity(face, hair_p, extras, eyes, brows, nose, mouth)


def sample_variation(rng: np.random.Generator) -> Variation:
    """Draw one image's nuisance parameters; kept smaller than between-identity spread."""
    u = rng.uniform
    return Variation(
        angle=u(-10, 10),
        scale=u(0.92, 1.08),
        dx=u(-3, 3),
        dy=u(-3, 3),
        yaw=u(-2.5, 2.5),
        brightness=u(-20, 20),
        contrast=u(0.85, 1.15),
        light_angle=u(0, 2 * np.pi),
        light_strength=u(0, 0.22),
        gains=tuple(u(0.96, 1.04, 3).tolist()),
        background=tuple((u(50, 210) + rng.normal(0, 18, 3)).tolist()),
        smile=u(-0.3, 1.0),
        mouth_open=u(0, 1) * (u() < 0.3),
        eye_open=u(0.7, 1.1),
        noise_sigma=u(1, 4),
        noise_seed=int(rng.integers(2**31)),
    )


def swap_region(identity: Identity, donor: Identity, region: str) -> Identity:
    """Return ``identity`` with the parameters of one region (see REGIONS) taken from ``donor``."""
    if region not in REGIONS:
        raise ValueError(f"unknown region {region!r}; expected one of {REGIONS}")
    return dataclasses.replace(identity, **{region: getattr(donor, region)})


class _Canvas:
    """Draws polygons given in 112-px face coordinates through one affine map (pose)."""

    def __init__(self, v: Variation, size: int) -> None:
        k = _SS * size / 112
        self.image = Image.new("RGB", (_SS * size, _SS * size), _rgb(v.background))
        self.draw = ImageDraw.Draw(self.image)
        a = np.deg2rad(v.angle)
        self.lin = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) * v.scale * k
        self.off = k * np.add(_CENTRE, (v.dx, v.dy)) - _CENTRE @ self.lin  # pivot: _CENTRE
        self.width_k = k * v.scale

    def poly(self, pts: np.ndarray, colour: Any) -> None:
        self.draw.polygon((pts @ self.lin + self.off).ravel().tolist(), fill=_rgb(colour))

    def line(self, pts: np.ndarray, colour: Any, width: float) -> None:
        xy = (pts @ self.lin + self.off).ravel().tolist()
        w = max(1, round(width * self.width_k))
        self.draw.line(xy, fill=_rgb(colour), width=w, joint="curve")


def _rgb(colour: Any) -> tuple[int, int, int]:
    r, g, b = (min(255, max(0, int(c))) for c in colour)  # plain Python: numpy is slow on scalars
    return r, g, b


def _shade(colour: Any, f: float) -> tuple[float, ...]:
    return tuple(c * f for c in colour)


_X = {n: np.linspace(-1, 1, n) for n in (13, 17, 21, 33)}  # curve parameters, shared
_CIRCLES = {
    n: np.stack([np.cos(t), np.sin(t)], 1)
    for n in (12, 16, 20, 24, 64)
    for t in [np.linspace(0, 2 * np.pi, n, endpoint=False)]
}


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 24) -> np.ndarray:
    return _CIRCLES[n] * (rx, ry) + (cx, cy)


def _band(xs: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Polygon between two curves sampled at the same xs (lips, brows, eye whites)."""
    return np.concatenate([np.stack([xs, top], 1), np.stack([xs, bottom], 1)[::-1]])


def _draw_head(c: _Canvas, p: Identity, v: Variation) -> None:
    """Back hair, neck, ears, face oval and fringe; the face shifts less than features on yaw."""
    f, h, e = p.face, p.hair, p.extras
    cx, cy, w = 56 + 0.3 * v.yaw, f["cy"], f["w"]
    if not h["bald"]:
        top = _ellipse(cx, cy, w + h["vol"], f["h"] + h["vol"], 64)[32:]  # upper half
        sides = [[cx + w + h["side"], h["length"]], [cx - w - h["side"], h["length"]]]
        c.poly(np.concatenate([top, [[cx + w + h["vol"], cy]], sides]), h["colour"])
    neck = [[cx - 0.5 * w, cy], [cx + 0.5 * w, cy], [cx + 0.6 * w, 140], [cx - 0.6 * w, 140]]
    c.poly(np.array(neck), _shade(f["skin"], 0.8))
    sin_ear = min(max((e["ear_y"] - cy) / f["h"], -1), 1)  # ears sit on the outline at ear_y
    ear_x = w * np.sqrt(1 - sin_ear**2) * (1 - f["jaw"] * max(sin_ear, 0) ** f["chin"])
    for s in (-1, 1):
        c.poly(
            _ellipse(cx + s * (ear_x + 1), e["ear_y"], e["ear_w"], e["ear_h"], 16),
            _shade(f["skin"], 0.9),
        )
    oval = _ellipse(0, 0, 1, 1, 64)
    taper = 1 - f["jaw"] * np.clip(oval[:, 1], 0, None) ** f["chin"]  # narrower jaw and chin
    c.poly(oval * np.stack([w * taper, np.full(64, f["h"])], 1) + (cx, cy), f["skin"])
    if not h["bald"]:
        _draw_fringe(c, p, cx + 0.2 * v.yaw)


def _draw_fringe(c: _Canvas, p: Identity, cx: float) -> None:
    """Hair over the forehead, bounded below by a hairline curve with style parameters."""
    f, h, x = p.face, p.hair, _X[33]
    line = (
        h["line"]
        + 10 * x**4
        + h["slant"] * x  # sideburns drop at the sides; side part
        + h["peak"] * np.clip(1 - np.abs(x) / 0.25, 0, 1)  # widow's peak
        - h["recede"] * np.exp(-(((np.abs(x) - 0.55) / 0.2) ** 2))
    )  # receding temples
    bottom = np.stack([cx + x * (f["w"] + 0.5), np.minimum(line, f["cy"])], 1)
    top = _ellipse(cx, f["cy"], f["w"] + 0.5, f["h"] + 0.5, 64)[32:][::-1]
    c.poly(np.concatenate([bottom, top]), h["colour"])


def _draw_eyes(c: _Canvas, e: dict, v: Variation, skin: Any) -> None:
    """Almond eyes; iris and pupil are clamped between the lids, an exact intersection."""
    hh = e["h"] * v.eye_open
    xs = _X[17] * e["w"]
    upper, lower = -hh * (1 - _X[17] ** 2) ** 0.8, 0.7 * hh * (1 - _X[17] ** 2)
    discs = []
    for radius in (e["iris"] * 0.6 * e["w"], 0.21 * e["w"]):
        pts = _ellipse(0, 0, radius, radius, 20)
        u = np.clip(pts[:, 0] / e["w"], -1, 1)
        pts[:, 1] = np.clip(pts[:, 1], -hh * (1 - u**2) ** 0.8, 0.7 * hh * (1 - u**2))
        discs.append(pts)
    for s in (-1, 1):
        t = np.deg2rad(e["tilt"])
        rot = np.array([[np.cos(t), -s * np.sin(t)], [s * np.sin(t), np.cos(t)]])
        centre = (56 + s * e["sp"] + v.yaw, e["y"])
        c.poly(_band(xs, upper, lower) @ rot + centre, (238, 234, 228))
        c.poly(discs[0] @ rot + centre, e["colour"])
        c.poly(discs[1] @ rot + centre, (15, 12, 12))
        c.line(np.stack([xs, upper], 1) @ rot + centre, _shade(skin, 0.3), 0.9)


def _draw_brows(c: _Canvas, b: dict, v: Variation) -> None:
    """Tapered arched brows; ``angle`` raises (positive) or lowers the outer end."""
    x = _X[13]  # -1 inner end, +1 outer end
    mid = b["y"] - b["arch"] * (1 - x**2) - np.tan(np.deg2rad(b["angle"])) * x * b["len"]
    half = 0.5 * b["thick"] * (1 - 0.45 * np.clip(x, 0, None))
    for s in (-1, 1):
        c.poly(_band(56 + v.yaw + s * (b["x"] + x * b["len"]), mid - half, mid + half), b["colour"])


def _draw_nose(c: _Canvas, n: dict, v: Variation, skin: Any) -> None:
    """Shaded bridge wedge, tip and nostrils; the nose moves most on yaw (it sticks out)."""
    cx, tip = 56 + 1.4 * v.yaw, n["tip"]
    wedge = [[cx - 1.5, n["top"]], [cx + 1.5, n["top"]], [cx + n["w"], tip], [cx - n["w"], tip]]
    c.poly(np.array(wedge), _shade(skin, 0.5 + 0.5 * n["shade"]))
    c.poly(_ellipse(cx, tip, n["tip_r"], 0.8 * n["tip_r"], 16), _shade(skin, n["shade"]))
    for s in (-1, 1):
        nostril = _ellipse(cx + s * 0.5 * n["w"], tip + 1.5, n["nostril"], 0.6 * n["nostril"], 12)
        c.poly(nostril, _shade(skin, 0.35))


def _draw_mouth(c: _Canvas, m: dict, v: Variation) -> None:
    """Lips around a mouth line whose corners rise with ``smile``; opening shows a dark gap."""
    x = _X[21]
    xs = 56 + 1.1 * v.yaw + x * m["w"]
    mid = m["y"] - v.smile * 0.25 * m["w"] * x**2
    gap = 2.5 * v.mouth_open * (1 - x**2)
    bow = 1 - 0.35 * np.exp(-((x / 0.15) ** 2))  # cupid's bow dip in the upper lip
    body = np.sqrt(1 - x**2)
    if v.mouth_open > 0:
        c.poly(_band(xs, mid - gap, mid + gap), (60, 20, 25))
    c.poly(_band(xs, mid - gap - m["upper"] * body * bow, mid - gap), m["colour"])
    c.poly(_band(xs, mid + gap, mid + gap + m["lower"] * body), m["colour"])
    c.line(np.stack([xs, mid], 1), _shade(m["colour"], 0.45), 0.7)


def _draw_glasses(c: _Canvas, e: dict, v: Variation) -> None:
    cx, y, sp, w = 56 + v.yaw, e["g_y"], e["g_sp"], e["g_w"]
    for s in (-1, 1):
        rim = _ellipse(cx + s * sp, y, w, e["g_h"], 24)
        c.line(np.concatenate([rim, rim[:1]]), e["g_colour"], 1.1)
    c.line(np.array([[cx - sp + w, y - 1], [cx + sp - w, y - 1]]), e["g_colour"], 1.1)


def render_face(
    identity: Identity | Mapping, variation: Variation | Mapping, size: int = 112
) -> np.ndarray:
    """Render one face as a [size, size, 3] uint8 RGB array; a pure function of its inputs."""
    p = identity if isinstance(identity, Identity) else Identity(**identity)
    v = variation if isinstance(variation, Variation) else Variation(**variation)
    c = _Canvas(v, size)
    skin = p.face["skin"]
    _draw_head(c, p, v)
    _draw_brows(c, p.brows, v)
    _draw_eyes(c, p.eyes, v, skin)
    _draw_nose(c, p.nose, v, skin)
    _draw_mouth(c, p.mouth, v)
    if p.extras["glasses"]:
        _draw_glasses(c, p.extras, v)
    # Photometric changes work on a (size, 3*size) view: numpy is slow on a trailing axis of 3.
    img = np.asarray(c.image.reduce(_SS), dtype=np.float32).reshape(size, 3 * size)
    g = np.linspace(-1, 1, size, dtype=np.float32)
    lx, ly = (np.float32(v.light_strength * f(v.light_angle)) for f in (np.cos, np.sin))
    light = (lx * np.repeat(g, 3) + 1) + ly * g[:, None]  # directional light: a linear ramp
    light *= np.tile(np.float32(v.gains), size)  # white balance
    img *= np.float32(v.contrast)
    img += np.float32(128 * (1 - v.contrast) + v.brightness)
    img *= light
    noise = np.random.default_rng(v.noise_seed).standard_normal(img.shape, dtype=np.float32)
    img += np.float32(v.noise_sigma) * noise + np.float32(0.5)  # +0.5: round, not truncate
    return np.clip(img, 0, 255).astype(np.uint8).reshape(size, size, 3)


# ----------------------------------------------------------------------------- dataset on disk


def _params(
    identities: Mapping[str, int],
    images_per_identity: int,
    pairs_per_split: int,
    one_region_pairs: int,
    seed: int,
    image_size: int,
) -> dict[str, Any]:
    """Validate the arguments and return them as the JSON-able dict stored in the manifest."""
    identities = {str(k): int(n) for k, n in identities.items()}
    if not identities:
        raise ConfigError("identities must name at least one split")
    for name, n in identities.items():
        if not name.isidentifier() or name.endswith("_one_region"):
            raise ConfigError(f"bad split name {name!r}: use letters, digits and underscores")
        if n < 2:
            raise ConfigError(f"split {name!r} needs at least 2 identities, got {n}")
    if images_per_identity < 2:
        raise ConfigError(f"images_per_identity must be >= 2, got {images_per_identity}")
    if pairs_per_split <= 0 or pairs_per_split % 20:
        raise ConfigError(
            f"pairs_per_split must be a positive multiple of 20 (10 folds, half "
            f"same, half different), got {pairs_per_split}"
        )
    if one_region_pairs < 0 or one_region_pairs % 10:
        raise ConfigError(
            f"one_region_pairs must be a multiple of 10 (10 folds), got {one_region_pairs}"
        )
    if image_size < 32:
        raise ConfigError(f"image_size must be >= 32, got {image_size}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    same_available = images_per_identity * (images_per_identity - 1) // 2
    for name, n in identities.items():
        if name != "train" and n * same_available < pairs_per_split // 2:
            raise ConfigError(
                f"split {name!r} has only {n * same_available} distinct same-identity "
                f"pairs, fewer than the {pairs_per_split // 2} requested"
            )
    # JSON objects are unordered, yet split order decides identity numbering: record it.
    return {
        "identities": identities,
        "split_order": list(identities),
        "images_per_identity": int(images_per_identity),
        "pairs_per_split": int(pairs_per_split),
        "one_region_pairs": int(one_region_pairs),
        "seed": int(seed),
        "image_size": int(image_size),
    }


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def _save_png(img: np.ndarray, path: Path) -> None:
    """Write an RGB PNG, about 3x faster than Pillow's encoder for these noisy images.

    Every row uses the "Sub" filter (difference to the pixel on the left), then Huffman-only
    deflate: pixel noise defeats deflate's string matching, so that costs no size.
    """
    h, w, _ = img.shape
    rows = img.reshape(h, 3 * w)
    sub = rows.copy()
    sub[:, 3:] -= rows[:, :-3]  # uint8 wrap-around is what PNG specifies
    raw = np.concatenate([np.ones((h, 1), np.uint8), sub], 1).tobytes()  # 1: filter "Sub"
    z = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", z.compress(raw) + z.flush())
        + _png_chunk(b"IEND", b"")
    )


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")  # fixed line ends keep files byte-identical
        writer.writerow(header)
        writer.writerows(rows)


def _pairs(rng: np.random.Generator, n_ids: int, n_img: int, count: int) -> list[tuple]:
    """LFW-style pairs ((id, img), (id, img), label, fold): per fold, same pairs then different."""
    same_all = [
        ((i, a), (i, b)) for i in range(n_ids) for a, b in itertools.combinations(range(n_img), 2)
    ]
    same = [same_all[k] for k in rng.choice(len(same_all), count // 2, replace=False)]
    diff: list[tuple] = []
    seen: set[frozenset] = set()
    # There are at least as many distinct different pairs as same pairs (checked in _params).
    while len(diff) < count // 2:
        i, j = rng.choice(n_ids, 2, replace=False)
        pair = ((int(i), int(rng.integers(n_img))), (int(j), int(rng.integers(n_img))))
        if frozenset(pair) not in seen:
            seen.add(frozenset(pair))
            diff.append(pair)
    half = count // 20
    return [
        (*pairs[f * half + k], label, f)
        for f in range(10)
        for pairs, label in ((same, 1), (diff, 0))
        for k in range(half)
    ]


def _one_region_pairs(
    rng: np.random.Generator, ids: list[Identity], count: int, size: int, out: Path
) -> list[list[Any]]:
    """Render A/B pairs differing in one region; the box is where pixels really differ."""
    rows = []
    for k in range(count):
        region = REGIONS[k % len(REGIONS)]
        while True:  # a changed region is only useful if it changes pixels
            p, q = rng.choice(len(ids), 2, replace=False)
            v = sample_variation(rng)
            a = render_face(ids[p], v, size)
            b = render_face(swap_region(ids[p], ids[q], region), v, size)
            ys, xs = np.nonzero(np.any(a != b, axis=2))
            if len(ys):
                break
        _save_png(a, out / f"{k:04d}_a.png")
        _save_png(b, out / f"{k:04d}_b.png")
        rows.append(
            [
                f"{out.name}/{k:04d}_a.png",
                f"{out.name}/{k:04d}_b.png",
                0,
                k * 10 // count,
                region,
                xs.min(),
                ys.min(),
                xs.max() + 1,
                ys.max() + 1,
            ]
        )
    return rows


def _write_split(
    root: Path, params: dict[str, Any], split: str, split_idx: int, first: int
) -> dict[str, Any]:
    """Write one split's identity folders and, unless it is "train", its pair CSVs."""
    seed, size, n_img = params["seed"], params["image_size"], params["images_per_identity"]
    n_ids = params["identities"][split]
    # Seeds hang off (seed, kind, global index): splits never share an identity's draws.
    ids = [sample_identity(np.random.default_rng([seed, 1, first + i])) for i in range(n_ids)]
    names = [f"id_{first + i:05d}" for i in range(n_ids)]
    for i, (name, identity) in enumerate(zip(names, ids, strict=True)):
        (root / split / name).mkdir(parents=True)
        for j in range(n_img):
            v = sample_variation(np.random.default_rng([seed, 2, first + i, j]))
            _save_png(render_face(identity, v, size), root / split / name / f"{j:04d}.png")
    info: dict[str, Any] = {
        "identities": n_ids,
        "images": n_ids * n_img,
        "first_identity": names[0],
        "last_identity": names[-1],
    }
    if split == "train":
        return info
    pairs = _pairs(
        np.random.default_rng([seed, 3, split_idx]), n_ids, n_img, params["pairs_per_split"]
    )
    rows = [
        [f"{split}/{names[i]}/{a:04d}.png", f"{split}/{names[j]}/{b:04d}.png", label, fold]
        for (i, a), (j, b), label, fold in pairs
    ]
    _write_csv(root / f"synth_{split}.csv", ["path_a", "path_b", "label", "fold"], rows)
    info.update(pairs=len(rows), pairs_csv=f"synth_{split}.csv")
    if params["one_region_pairs"]:
        out = root / f"{split}_one_region"
        out.mkdir()
        rows = _one_region_pairs(
            np.random.default_rng([seed, 4, split_idx]), ids, params["one_region_pairs"], size, out
        )
        header = ["path_a", "path_b", "label", "fold", "region", "x0", "y0", "x1", "y1"]
        _write_csv(root / f"synth_{split}_one_region.csv", header, rows)
        info.update(one_region_pairs=len(rows), one_region_csv=f"synth_{split}_one_region.csv")
    return info


def _generate_into(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Write the whole set into ``root`` (an empty directory); manifest.json goes last."""
    splits, first = {}, 0
    for split_idx, split in enumerate(params["split_order"]):
        n_ids = params["identities"][split]
        splits[split] = _write_split(root, params, split, split_idx, first)
        first += n_ids
    csvs = sorted(p.name for p in root.glob("*.csv"))
    counts = {
        key: sum(s.get(key, 0) for s in splits.values())
        for key in ("identities", "images", "pairs", "one_region_pairs")
    }
    counts["png_files"] = counts["images"] + 2 * counts["one_region_pairs"]
    counts["csv_files"] = len(csvs)
    manifest = {
        "version": GENERATOR_VERSION,
        "params": params,
        "splits": splits,
        "counts": counts,
        "files": {"png": counts["png_files"], "csv": csvs},
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _read_manifest(root: Path) -> dict[str, Any] | None:
    """The set's manifest, or None where ``root`` holds no (readable) SynthFaces set."""
    try:
        return read_manifest(root / "manifest.json", "missing", "regenerate the set")
    except DataError:
        return None


def generate_synthfaces(
    root: str | Path,
    *,
    identities: Mapping[str, int] = DEFAULT_IDENTITIES,
    images_per_identity: int = 12,
    pairs_per_split: int = 600,
    one_region_pairs: int = 200,
    seed: int = 0,
    image_size: int = 112,
) -> dict[str, Any]:
    """(Re)generate the set at ``root`` and return its manifest.

    The set is written to a temporary sibling directory and renamed into place, so an
    interrupted run never leaves a directory with a manifest but missing files.  An existing
    ``root`` is replaced only if it is empty or holds a SynthFaces set (has manifest.json);
    any other folder raises ``DataError`` naming it (the user's files are never deleted).
    """
    params = _params(
        identities, images_per_identity, pairs_per_split, one_region_pairs, seed, image_size
    )
    return _generate(Path(root), params)


def _generate(root: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Build in a temporary sibling, then swap it in with renames (atomic on one filesystem)."""
    if root.exists() and any(root.iterdir()) and _read_manifest(root) is None:
        raise DataError(
            f"{root}: exists, is not empty and is not a SynthFaces set; refusing to replace "
            "it. Choose another folder (xcos synth --out, or data.synthetic.root in the "
            "config) or empty this one"
        )
    log.info("generating SynthFaces v%d in %s: %s", GENERATOR_VERSION, root, params)
    with atomic_folder(root) as tmp:  # a stale set is swapped out, then deleted
        manifest = _generate_into(tmp, params)
    log.info("SynthFaces ready in %s (%d png files)", root, manifest["files"]["png"])
    return manifest


def ensure_synthfaces(
    root: str | Path,
    *,
    identities: Mapping[str, int] = DEFAULT_IDENTITIES,
    images_per_identity: int = 12,
    pairs_per_split: int = 600,
    one_region_pairs: int = 200,
    seed: int = 0,
    image_size: int = 112,
) -> dict[str, Any]:
    """Return the manifest at ``root`` if it matches the arguments and version, else regenerate.

    Takes the same keyword arguments as :func:`generate_synthfaces`.
    """
    params = _params(
        identities, images_per_identity, pairs_per_split, one_region_pairs, seed, image_size
    )

    def current() -> dict[str, Any] | None:
        m = _read_manifest(Path(root)) or {}
        return m if (m.get("version"), m.get("params")) == (GENERATOR_VERSION, params) else None

    if manifest := current():
        log.debug("reusing SynthFaces at %s", root)
        return manifest
    try:
        return _generate(Path(root), params)
    except OSError:  # another process may have finished the same set first
        if manifest := current():
            return manifest
        raise
