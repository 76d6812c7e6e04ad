"""Synthetic vehicle scenes with known boxes, masks and labels (numpy + OpenCV drawing, seeded).

Six side-view vehicle kinds, each drawn from parts a small CNN can learn to tell apart (wheels with
hubs, body outline, cabin, windows, cargo box, rider), with random colour, size, facing and a slight
shear/rotation, pasted onto cluttered backgrounds (sky/road gradients, buildings, trees, random shapes,
lines, noise) so that a classifier looking at the whole image is distracted by the clutter.

``CLASSES`` maps each classifier label to the COCO class a detector reports for it. A scene's
objects are sorted largest box first; ``Scene.primary`` (the largest vehicle) is what an image is about.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

CLASSES: dict[str, str] = {
    "sedan": "car",
    "suv": "car",
    "pickup": "truck",
    "truck": "truck",
    "bus": "bus",
    "motorcycle": "motorcycle",
}

# Height of each kind's drawing as a fraction of its length (side view, wheels included).
_ASPECT = {"sedan": 0.36, "suv": 0.52, "pickup": 0.44, "truck": 0.62, "bus": 0.36, "motorcycle": 0.62}


@dataclass
class SceneObject:
    """One drawn vehicle: classifier label, its COCO detector class, visible box and mask."""

    label: str
    detector_class: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 (x2/y2 exclusive), pixels
    mask: np.ndarray  # bool H x W, full image, visible pixels only


@dataclass
class Scene:
    """An RGB uint8 image and the vehicles in it, largest box first."""

    image: np.ndarray
    objects: list[SceneObject]

    @property
    def primary(self) -> SceneObject:
        """The largest vehicle: the one the image is about."""
        return self.objects[0]

    @property
    def label(self) -> str:
        """The primary vehicle's classifier label."""
        return self.primary.label


def _colour(rng: np.random.Generator, sat=(90, 255), val=(70, 255)) -> tuple[int, int, int]:
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(*sat), rng.integers(*val)]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _poly(img, mask, pts, colour, length, height) -> None:
    p = np.array([[x * length, y * height] for x, y in pts], np.int32)
    cv2.fillPoly(img, [p], colour)
    if mask is not None:
        cv2.fillPoly(mask, [p], 1)


def _wheel(img, mask, x, y, r, rng) -> None:
    c = (int(x), int(y))
    r = max(2, int(r))
    cv2.circle(img, c, r, (18, 18, 18), -1)
    cv2.circle(mask, c, r, 1, -1)
    grey = int(rng.integers(140, 220))
    cv2.circle(img, c, max(1, int(r * 0.5)), (grey, grey, grey), -1)  # hub
    cv2.circle(img, c, max(1, int(r * 0.15)), (40, 40, 40), -1)


def _draw_car_like(kind: str, img, mask, L: int, H: int, body, rng) -> None:
    """Sedan, SUV, pickup, truck and bus: body polygons, windows, wheels; facing right."""
    glass = tuple(int(v) for v in rng.integers(30, 90, 3)) if rng.random() < 0.5 else (60, 80, 110)
    r = 0.105 * L
    wy = H - r - 1
    if kind == "sedan":
        _poly(
            img,
            mask,
            [
                (0.0, 0.5),
                (0.22, 0.42),
                (0.34, 0.08),
                (0.66, 0.08),
                (0.8, 0.45),
                (1.0, 0.52),
                (1.0, 0.8),
                (0.0, 0.8),
            ],
            body,
            L,
            H,
        )
        _poly(img, None, [(0.37, 0.14), (0.49, 0.14), (0.49, 0.42), (0.27, 0.42)], glass, L, H)
        _poly(img, None, [(0.52, 0.14), (0.64, 0.14), (0.75, 0.42), (0.52, 0.42)], glass, L, H)
        wheels = (0.18, 0.8)
    elif kind == "suv":
        _poly(
            img,
            mask,
            [(0.0, 0.06), (0.74, 0.04), (0.86, 0.4), (1.0, 0.46), (1.0, 0.84), (0.0, 0.84)],
            body,
            L,
            H,
        )
        for x0, x1 in ((0.04, 0.26), (0.3, 0.52), (0.56, 0.72)):
            _poly(
                img,
                None,
                [(x0, 0.12), (x1, 0.12), (x1 + (0.08 if x1 > 0.7 else 0), 0.42), (x0, 0.42)],
                glass,
                L,
                H,
            )
        wheels = (0.18, 0.8)
    elif kind == "pickup":
        _poly(
            img,
            mask,
            [
                (0.0, 0.42),
                (0.56, 0.42),
                (0.58, 0.05),
                (0.8, 0.05),
                (0.88, 0.42),
                (1.0, 0.48),
                (1.0, 0.82),
                (0.0, 0.82),
            ],
            body,
            L,
            H,
        )
        _poly(
            img, None, [(0.03, 0.46), (0.54, 0.46), (0.54, 0.54), (0.03, 0.54)], (35, 35, 35), L, H
        )  # open bed
        _poly(img, None, [(0.62, 0.12), (0.78, 0.12), (0.84, 0.4), (0.62, 0.4)], glass, L, H)
        wheels = (0.17, 0.8)
    elif kind == "truck":
        box = _colour(rng, sat=(0, 60), val=(150, 250)) if rng.random() < 0.6 else _colour(rng)
        _poly(img, mask, [(0.0, 0.0), (0.74, 0.0), (0.74, 0.82), (0.0, 0.82)], box, L, H)  # cargo box
        _poly(
            img, mask, [(0.76, 0.25), (0.93, 0.25), (1.0, 0.5), (1.0, 0.84), (0.76, 0.84)], body, L, H
        )  # cab
        _poly(img, None, [(0.79, 0.3), (0.92, 0.3), (0.96, 0.48), (0.79, 0.48)], glass, L, H)
        _poly(img, mask, [(0.72, 0.7), (0.78, 0.7), (0.78, 0.84), (0.72, 0.84)], (40, 40, 40), L, H)
        wheels = (0.12, 0.27, 0.88)
    else:  # bus
        _poly(img, mask, [(0.0, 0.04), (0.97, 0.04), (1.0, 0.15), (1.0, 0.86), (0.0, 0.86)], body, L, H)
        n = int(rng.integers(6, 9))
        for i in range(n):
            x0 = 0.03 + i * 0.84 / n
            _poly(
                img,
                None,
                [(x0, 0.14), (x0 + 0.84 / n - 0.02, 0.14), (x0 + 0.84 / n - 0.02, 0.46), (x0, 0.46)],
                glass,
                L,
                H,
            )
        _poly(img, None, [(0.9, 0.14), (0.98, 0.14), (0.98, 0.8), (0.9, 0.8)], glass, L, H)  # door
        wheels = (0.14, 0.8)
    for wx in wheels:
        _wheel(img, mask, wx * L, wy, r, rng)


def _draw_motorcycle(img, mask, L: int, H: int, body, rng) -> None:
    """Two large wheels, a thin frame, tank and a rider blob; facing right."""
    r = 0.2 * L
    wy = H - r - 1
    t = max(2, L // 30)
    pts = lambda *p: [(int(x * L), int(y * H)) for x, y in p]  # noqa: E731
    a, b, c, d = pts((0.2, (H - r) / H), (0.45, 0.55), (0.72, 0.5), (0.82, (H - r) / H))
    for p, q in ((a, b), (b, c), (c, d), (a, c)):
        cv2.line(img, p, q, (70, 70, 70), t)
        cv2.line(mask, p, q, 1, t)
    _poly(img, mask, [(0.4, 0.45), (0.7, 0.42), (0.68, 0.58), (0.42, 0.6)], body, L, H)  # tank
    rider = _colour(rng, val=(40, 200))
    _poly(img, mask, [(0.36, 0.12), (0.52, 0.1), (0.58, 0.46), (0.36, 0.5)], rider, L, H)  # torso
    cv2.ellipse(
        img, pts((0.47, 0.09))[0], (int(0.07 * L), int(0.07 * L)), 0, 0, 360, (30, 30, 30), -1
    )  # helmet
    cv2.ellipse(mask, pts((0.47, 0.09))[0], (int(0.07 * L), int(0.07 * L)), 0, 0, 360, 1, -1)
    for wx in (0.2, 0.82):
        _wheel(img, mask, wx * L, wy, r, rng)


def draw_vehicle(rng: np.random.Generator, label: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """One vehicle ``length`` px long on a transparent canvas: (RGB uint8, bool mask), jittered."""
    if label not in CLASSES:
        raise ValueError(f"unknown vehicle label {label!r}; known: {sorted(CLASSES)}")
    L = max(12, int(length))
    H = max(6, int(round(L * _ASPECT[label] * rng.uniform(0.92, 1.08))))
    img = np.zeros((H, L, 3), np.uint8)
    mask = np.zeros((H, L), np.uint8)
    body = _colour(rng)
    if label == "motorcycle":
        _draw_motorcycle(img, mask, L, H, body, rng)
    else:
        _draw_car_like(label, img, mask, L, H, body, rng)
    if rng.random() < 0.5:  # face left
        img, mask = img[:, ::-1].copy(), mask[:, ::-1].copy()
    # Slight rotation + shear, on a canvas padded so nothing is cut off.
    pad = int(0.12 * max(L, H))
    img = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    mask = cv2.copyMakeBorder(mask, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
    h, w = mask.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), float(rng.uniform(-4, 4)), 1.0)
    m[0, 1] += float(rng.uniform(-0.08, 0.08))
    img = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.warpAffine(mask, m, (w, h), flags=cv2.INTER_NEAREST).astype(bool)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return img[y0:y1, x0:x1], mask[y0:y1, x0:x1]


def background(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, int]:
    """A cluttered street-ish background (W, H) and the horizon row."""
    W, H = size
    horizon = int(H * rng.uniform(0.3, 0.6))
    img = np.empty((H, W, 3), np.float32)
    top, low = (
        np.array(_colour(rng, sat=(20, 160), val=(150, 255)), np.float32),
        np.array(_colour(rng, sat=(0, 80), val=(150, 255)), np.float32),
    )
    t = np.linspace(0, 1, max(1, horizon))[:, None, None]
    img[:horizon] = top * (1 - t) + low * t
    road0, road1 = (
        np.array(_colour(rng, sat=(0, 50), val=(60, 140)), np.float32),
        np.array(_colour(rng, sat=(0, 50), val=(30, 110)), np.float32),
    )
    t = np.linspace(0, 1, max(1, H - horizon))[:, None, None]
    img[horizon:] = road0 * (1 - t) + road1 * t
    img = img.astype(np.uint8)
    for _ in range(int(rng.integers(1, 6))):  # buildings with window grids
        bw, bh = int(W * rng.uniform(0.08, 0.3)), int(horizon * rng.uniform(0.3, 0.95))
        x = int(rng.integers(-bw // 2, W))
        cv2.rectangle(
            img, (x, horizon - bh), (x + bw, horizon), _colour(rng, sat=(0, 120), val=(60, 220)), -1
        )
        step = max(4, bw // 5)
        win = _colour(rng, sat=(0, 100), val=(30, 250))
        for wy in range(horizon - bh + step // 2, horizon - step, step):
            for wx in range(x + step // 3, x + bw - step // 2, step):
                cv2.rectangle(img, (wx, wy), (wx + step // 2, wy + step // 2), win, -1)
    for _ in range(int(rng.integers(0, 4))):  # trees
        x, r = int(rng.integers(0, W)), int(H * rng.uniform(0.04, 0.12))
        cv2.rectangle(
            img, (x - max(1, r // 5), horizon - r), (x + max(1, r // 5), horizon + r // 2), (90, 60, 30), -1
        )
        cv2.circle(img, (x, horizon - r - r // 2), r, _colour(rng, sat=(120, 255), val=(50, 160)), -1)
    for _ in range(int(rng.integers(3, 12))):  # random clutter shapes
        c, x, y = _colour(rng, sat=(0, 255), val=(30, 255)), int(rng.integers(0, W)), int(rng.integers(0, H))
        s = int(min(W, H) * rng.uniform(0.02, 0.12))
        kind = rng.integers(0, 3)
        if kind == 0:
            cv2.circle(img, (x, y), s, c, -1)
        elif kind == 1:
            cv2.rectangle(img, (x, y), (x + s, y + int(s * rng.uniform(0.3, 2))), c, -1)
        else:
            pts = (np.array([x, y]) + rng.integers(-s, s + 1, (int(rng.integers(3, 6)), 2))).astype(np.int32)
            cv2.fillPoly(img, [pts], c)
    for _ in range(int(rng.integers(2, 8))):  # lines: wires, lane marks, poles
        p = (int(rng.integers(0, W)), int(rng.integers(0, H)))
        q = (int(rng.integers(0, W)), int(rng.integers(0, H)))
        cv2.line(img, p, q, _colour(rng, sat=(0, 255), val=(20, 255)), int(rng.integers(1, 4)))
    return img, horizon


def _noise(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    sigma = float(rng.uniform(2, 9))
    return np.clip(img.astype(np.float32) + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def _place(rng, W, H, horizon, w, h, taken) -> tuple[int, int] | None:
    """Top-left of a w x h vehicle standing below the horizon, overlapping others little."""
    lo = min(max(h, horizon + (H - horizon) // 3), H)
    for _ in range(20):
        x = int(rng.integers(0, max(1, W - w + 1)))
        bottom = int(rng.integers(lo, H + 1))
        y = bottom - h
        over = max((_overlap((x, y, x + w, y + h), t) for t in taken), default=0.0)
        if over < 0.2:
            return x, max(0, y)
    return None


def _overlap(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return ix * iy / max(1, smaller)


def make_scene(
    rng: np.random.Generator,
    *,
    size: tuple[int, int] = (320, 240),
    n_vehicles: tuple[int, int] = (1, 3),
    scale: tuple[float, float] = (0.25, 0.6),
    labels: Sequence[str] | None = None,
) -> Scene:
    """A cluttered (W, H) scene with ``n_vehicles`` (inclusive range) vehicles of ``labels``.

    ``scale`` is each vehicle's length as a fraction of the image width. Vehicles that cannot be
    placed without heavy overlap are left out, but a scene always has at least one.
    """
    W, H = int(size[0]), int(size[1])
    choices = list(labels) if labels else list(CLASSES)
    img, horizon = background(rng, (W, H))
    n = int(rng.integers(n_vehicles[0], n_vehicles[1] + 1))
    objects: list[SceneObject] = []
    taken: list[tuple[int, int, int, int]] = []
    for i in range(max(1, n)):
        label = choices[int(rng.integers(0, len(choices)))]
        length = int(W * rng.uniform(*scale))
        # Keep the drawing inside the frame whatever its aspect.
        length = min(length, int(W * 0.95), int(H * 0.95 / (_ASPECT[label] * 1.25)))
        pix, m = draw_vehicle(rng, label, length)
        h, w = m.shape
        h, w = min(h, H), min(w, W)
        pix, m = pix[:h, :w], m[:h, :w]
        at = _place(rng, W, H, horizon, w, h, taken) if (objects or i == 0) else None
        if at is None:
            if objects:
                continue
            at = (int(rng.integers(0, W - w + 1)), H - h)
        x, y = at
        region = img[y : y + h, x : x + w]
        region[m] = pix[m]
        full = np.zeros((H, W), bool)
        full[y : y + h, x : x + w] = m
        for o in objects:  # later vehicles stand in front
            o.mask &= ~full
        objects.append(SceneObject(label, CLASSES[label], (0, 0, 0, 0), full))
        taken.append((x, y, x + w, y + h))
    img = _noise(rng, img)
    kept = []
    for o in objects:
        ys, xs = np.nonzero(o.mask)
        if len(xs):
            o.box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            kept.append(o)
    kept.sort(key=lambda o: (o.box[2] - o.box[0]) * (o.box[3] - o.box[1]), reverse=True)
    return Scene(image=img, objects=kept)


def make_vehicle_image(rng: np.random.Generator, label: str, size: int | tuple[int, int] = 96) -> np.ndarray:
    """One ``label`` vehicle roughly filling a (W, H) frame on clutter: quick classifier data."""
    W, H = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    img, _ = background(rng, (W, H))
    pix, m = draw_vehicle(rng, label, int(W * rng.uniform(0.8, 0.92)))
    f = min(W / m.shape[1], H / m.shape[0], 1.0) * 0.95
    if f < 1.0:
        pix = cv2.resize(pix, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        m = cv2.resize(
            m.astype(np.uint8), (pix.shape[1], pix.shape[0]), interpolation=cv2.INTER_NEAREST
        ).astype(bool)
    h, w = m.shape
    y, x = (H - h) // 2, (W - w) // 2
    img[y : y + h, x : x + w][m] = pix[m]
    return _noise(rng, img)


def encode(image: np.ndarray, fmt: str = ".jpg") -> bytes:
    """RGB uint8 -> encoded image bytes (".jpg", ".png", ...)."""
    ok, buf = cv2.imencode(fmt, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"OpenCV could not encode as {fmt!r}")
    return buf.tobytes()


def scene_dataset(n: int, seed: int, **scene_kwargs) -> Iterator[Scene]:
    """``n`` scenes from one seeded generator; ``scene_kwargs`` go to ``make_scene``."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield make_scene(rng, **scene_kwargs)
