"""Synthetic street scenes in the Cityscapes layout, so tests and demos need no download.

Each scene is drawn through a pinhole camera 1.5 m above a flat street: road with lane
markings, sidewalks, facades with windows (some gaps with trees, walls or fences), a
skyline, sky with clouds, and objects at random depths (vehicles, people, cyclists, poles
with signs and lights, trees), painted far to near with the same polygons into the image
and the label map (train ids, 255 = ignore: the ego vehicle's bonnet, as in Cityscapes).

The classes are deliberately hard to tell apart by colour alone (road, sidewalk, walls,
poles and many facades are greys; an overcast sky is as light as a pale facade; grass and
foliage share greens): position, shape and texture separate them. Lighting varies, shadows
fall over the ground and every image gets sensor-like noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..errors import D3NetError
from ..image import train_ids_to_label_ids
from ..palette import IGNORE_INDEX
from ..utils import PathLike, atomic_path, check_writable

# Train ids, named for readability.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, SKY = range(11)
PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(11, 19)

#: City folder names per split (the real Cityscapes cities).
CITIES = {
    "train": ("aachen", "bremen", "zurich"),
    "val": ("frankfurt", "lindau"),
    "test": ("berlin", "bonn"),
}

# Standard deviation of the per-pixel texture noise by class (0..255 units): foliage is
# busy, sky is smooth. Combined with a global sensor noise in `_finish`.
_TEXTURE = np.full(256, 6.0, dtype=np.float32)
_TEXTURE[[ROAD, SIDEWALK]] = 9.0
_TEXTURE[[BUILDING, WALL]] = 7.0
_TEXTURE[VEGETATION] = 22.0
_TEXTURE[TERRAIN] = 14.0
_TEXTURE[SKY] = 2.0

Color = tuple[int, int, int]


def _tone(rng: np.random.Generator, base: Sequence[float], spread: float) -> Color:
    """A colour near ``base``: a common brightness shift plus a small per-channel one."""
    shift = rng.normal(0.0, spread)
    values = np.asarray(base, dtype=float) + shift + rng.normal(0.0, spread * 0.25, 3)
    return tuple(int(v) for v in np.clip(values, 0, 255))


def _pick(rng: np.random.Generator, options: Sequence[Color]) -> Color:
    return options[rng.integers(len(options))]


def _gray(rng: np.random.Generator, low: float, high: float, tint: float = 6.0) -> Color:
    level = rng.uniform(low, high)
    return _tone(rng, (level, level, level + rng.uniform(-tint, tint)), 3.0)


@dataclass
class _Camera:
    """Pinhole camera ``height`` metres above the ground, looking along +Z.

    A point X metres to the right, Y metres up and Z metres ahead lands at
    ``u = cx + f X / Z``, ``v = horizon + f (height - Y) / Z`` (pixels).
    """

    f: float
    cx: float
    horizon: float
    height: float = 1.5

    def __call__(self, x: float, y: float, z: float) -> tuple[float, float]:
        return self.cx + self.f * x / z, self.horizon + self.f * (self.height - y) / z

    def scale(self, z: float) -> float:
        """Pixels per metre at depth ``z``."""
        return self.f / z


class _Canvas:
    """Paints image, label map and a shading map with the same shapes."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.rgb = Image.new("RGB", (width, height))
        self.label = Image.new("L", (width, height), IGNORE_INDEX)
        self.shade = Image.new("L", (width, height), 200)  # 200 means lighting x1.0
        self._rgb = ImageDraw.Draw(self.rgb)
        self._label = ImageDraw.Draw(self.label)
        self._shade = ImageDraw.Draw(self.shade)

    def polygon(self, points, color: Color, cls: int) -> None:
        points = [(float(u), float(v)) for u, v in points]
        self._rgb.polygon(points, fill=color)
        self._label.polygon(points, fill=cls)

    def rect(self, u0, v0, u1, v1, color: Color, cls: int) -> None:
        self.polygon([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], color, cls)

    def ellipse(self, u0, v0, u1, v1, color: Color, cls: int, width: int = 0) -> None:
        box = (min(u0, u1), min(v0, v1), max(u0, u1), max(v0, v1))
        if width > 0:
            self._rgb.ellipse(box, outline=color, width=width)
            self._label.ellipse(box, outline=cls, width=width)
        else:
            self._rgb.ellipse(box, fill=color)
            self._label.ellipse(box, fill=cls)

    def line(self, points, color: Color, cls: int, width: float) -> None:
        points = [(float(u), float(v)) for u, v in points]
        w = max(1, int(round(width)))
        self._rgb.line(points, fill=color, width=w)
        self._label.line(points, fill=cls, width=w)

    def shadow(self, points, level: float) -> None:
        """Darken a region (lighting only; labels untouched). ``level`` 1.0 = no change."""
        self._shade.polygon([(float(u), float(v)) for u, v in points],
                            fill=int(np.clip(200 * level, 0, 255)))


class _Scene:
    """One random street layout, drawn layer by layer onto a canvas."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.rng = rng
        self.height, self.width = height, width
        horizon = height * rng.uniform(0.36, 0.5)
        self.cam = _Camera(f=width * rng.uniform(0.5, 0.75),
                           cx=width * rng.uniform(0.4, 0.6), horizon=horizon)
        # Depth at which the ground meets the image bottom; start drawing nearer still.
        self.z_bottom = self.cam.f * self.cam.height / (height - horizon)
        self.z_near = 0.5 * self.z_bottom
        self.z_far = rng.uniform(55.0, 90.0)
        self.road_left = -rng.uniform(2.5, 7.0)
        self.road_right = rng.uniform(2.5, 7.0)
        self.walk_left = self.road_left - rng.uniform(1.8, 4.0)
        self.walk_right = self.road_right + rng.uniform(1.8, 4.0)
        verge = rng.random(2) < 0.35  # a grass strip between sidewalk and facade
        self.facade_left = self.walk_left - (rng.uniform(1.0, 4.0) if verge[0] else 0.0)
        self.facade_right = self.walk_right + (rng.uniform(1.0, 4.0) if verge[1] else 0.0)
        self.road_color = _gray(rng, 70, 120)
        # Sidewalks sometimes barely differ from the road: the curb and layout decide.
        self.walk_color = (_tone(rng, self.road_color, 10) if rng.random() < 0.4
                           else _gray(rng, 95, 165, tint=12))
        self.overcast = rng.random() < 0.45
        self.objects: list[tuple[float, callable]] = []  # (depth, painter) drawn far to near

    # -------------------------------------------------------------------- helpers
    def ground_quad(self, x0, x1, z0, z1, y=0):
        """A horizontal rectangle at height ``y`` (the ground by default)."""
        p = self.cam
        return [p(x0, y, z0), p(x1, y, z0), p(x1, y, z1), p(x0, y, z1)]

    def side_quad(self, x, y0, y1, z0, z1):
        """A vertical rectangle in the plane X = x (facing the street axis)."""
        p = self.cam
        return [p(x, y0, z0), p(x, y1, z0), p(x, y1, z1), p(x, y0, z1)]

    def front_rect(self, x0, x1, y0, y1, z):
        """A vertical rectangle facing the camera at depth z: (u0, v0, u1, v1)."""
        u0, v1 = self.cam(x0, y0, z)
        u1, v0 = self.cam(x1, y1, z)
        return u0, v0, u1, v1

    def visible(self, z: float, size_m: float, min_px: float = 1.5) -> bool:
        return self.cam.scale(z) * size_m >= min_px

    # --------------------------------------------------------------- background
    def draw_sky(self, canvas: _Canvas) -> None:
        rng, w, h = self.rng, self.width, self.height
        if self.overcast:
            top = _gray(rng, 150, 215, tint=10)
            bottom = _tone(rng, top, 8)
        else:
            top = _tone(rng, (70, 120, 190), 20)
            bottom = _tone(rng, (170, 195, 225), 15)
        rows = int(min(h, self.cam.horizon + 2))
        for v in range(0, rows, 2):
            t = v / max(rows - 1, 1)
            color = tuple(int(a + (b - a) * t) for a, b in zip(top, bottom))
            canvas.rect(0, v, w, v + 2, color, SKY)
        canvas.rect(0, rows, w, h, bottom, SKY)
        for _ in range(rng.integers(0, 6)):  # clouds
            cu, cv = rng.uniform(0, w), rng.uniform(0, self.cam.horizon * 0.7)
            cloud = _tone(rng, (235, 235, 238) if not self.overcast else (225, 225, 228), 8)
            for _ in range(rng.integers(3, 8)):
                ru, rv = rng.uniform(10, 40) * w / 512, rng.uniform(4, 12) * h / 256
                du, dv = rng.normal(0, ru), rng.normal(0, rv * 0.5)
                canvas.ellipse(cu + du - ru, cv + dv - rv, cu + du + ru, cv + dv + rv, cloud, SKY)

    def draw_ground(self, canvas: _Canvas) -> None:
        rng, cam = self.rng, self.cam
        z0, z_end = self.z_near, self.z_far * 6  # the ground runs on behind the skyline
        terrain = _tone(rng, (120, 140, 70) if rng.random() < 0.7 else (140, 120, 90), 15)
        strips = [(self.facade_left - 30, self.walk_left, terrain, TERRAIN),
                  (self.walk_right, self.facade_right + 30, terrain, TERRAIN),
                  (self.walk_left, self.road_left, self.walk_color, SIDEWALK),
                  (self.road_right, self.walk_right, self.walk_color, SIDEWALK),
                  (self.road_left, self.road_right, self.road_color, ROAD)]
        for x0, x1, color, cls in strips:
            canvas.polygon(self.ground_quad(x0, x1, z0, z_end), color, cls)

        # Paving joints on the sidewalks, a curb stone line along the road.
        joint = tuple(max(c - 25, 0) for c in _tone(rng, self.walk_color, 4))
        step = rng.uniform(0.8, 1.6)
        z = z0
        while z < self.z_far:
            for x0, x1 in ((self.walk_left, self.road_left), (self.road_right, self.walk_right)):
                canvas.line([cam(x0, 0, z), cam(x1, 0, z)], joint, SIDEWALK, 1)
            z += step * (1 + z / 25)  # sparser far away, to stay above a pixel
        curb = tuple(min(c + 35, 255) for c in self.walk_color)
        for x in (self.road_left, self.road_right):
            width = 0.2 if x > 0 else -0.2
            canvas.polygon(self.ground_quad(x, x + width, z0, self.z_far), curb, SIDEWALK)

        # Lane markings (road class, as in Cityscapes): dashed centre, solid edges.
        paint = (230, 230, 225) if rng.random() < 0.8 else (225, 200, 60)
        centre = (self.road_left + self.road_right) / 2 + rng.uniform(-0.5, 0.5)
        dash, gap = rng.uniform(2.0, 4.0), rng.uniform(3.0, 7.0)
        z = z0 + rng.uniform(0, dash + gap)
        while z < self.z_far:
            canvas.polygon(self.ground_quad(centre - 0.07, centre + 0.07, z, z + dash), paint, ROAD)
            z += dash + gap
        if rng.random() < 0.6:
            for x in (self.road_left + 0.4, self.road_right - 0.55):
                canvas.polygon(self.ground_quad(x, x + 0.12, z0, self.z_far), paint, ROAD)
        if rng.random() < 0.3:  # a zebra crossing
            zc = rng.uniform(self.z_bottom * 1.3, 20.0)
            x = self.road_left
            while x < self.road_right:
                canvas.polygon(self.ground_quad(x, x + 0.5, zc, zc + 3.0), paint, ROAD)
                x += 1.0
        # Manhole covers and patches: darker blobs that are still road.
        for _ in range(rng.integers(0, 4)):
            z = rng.uniform(self.z_bottom, 25)
            x = rng.uniform(self.road_left + 0.5, self.road_right - 1.5)
            quad = self.ground_quad(x, x + rng.uniform(0.6, 2.5), z, z + rng.uniform(0.6, 3))
            canvas.polygon(quad, _tone(rng, self.road_color, 12), ROAD)

    def draw_skyline(self, canvas: _Canvas) -> None:
        """Buildings and trees across the far end of the street."""
        rng, z = self.rng, self.z_far
        x = self.facade_left - 10
        while x < self.facade_right + 10:
            w = rng.uniform(6, 20)
            if rng.random() < 0.25:
                self._tree_crown(canvas, x + w / 2, rng.uniform(4, 9), rng.uniform(3, 6), z)
            elif rng.random() < 0.85:
                color = _gray(rng, 60, 190, tint=15)
                canvas.rect(*self.front_rect(x, x + w, 0, rng.uniform(8, 35), z), color, BUILDING)
            x += w

    # ------------------------------------------------------------------ facades
    def draw_facades(self, canvas: _Canvas) -> None:
        for side in (-1, 1):
            x = self.facade_left if side < 0 else self.facade_right
            z = self.z_near
            while z < self.z_far:
                length = self.rng.uniform(8, 30)
                z1 = min(z + length, self.z_far)
                kind = self.rng.random()
                if kind < 0.75:
                    self._building(canvas, x, z, z1, side)
                elif kind < 0.9:
                    self._park(canvas, x, z, z1, side)
                else:  # a wall or a see-through fence
                    height = self.rng.uniform(1.0, 2.5)
                    if self.rng.random() < 0.5:
                        canvas.polygon(self.side_quad(x, 0, height, z, z1),
                                       _gray(self.rng, 90, 170, tint=10), WALL)
                    else:
                        self._fence(canvas, x, z, z1, height)
                z = z1

    def _building(self, canvas: _Canvas, x: float, z0: float, z1: float, side: int) -> None:
        rng = self.rng
        height = rng.uniform(7, 28)
        if rng.random() < 0.5:
            color = _gray(rng, 60, 200, tint=10)
        else:  # brick, sandstone, plaster
            color = _tone(rng, _pick(rng, [(150, 80, 60), (190, 170, 130), (200, 190, 170)]), 20)
        canvas.polygon(self.side_quad(x, 0, height, z0, z1), color, BUILDING)
        # A cast shadow over the street from tall facades on the sunny side.
        if rng.random() < 0.4:
            reach = rng.uniform(0.3, 1.0) * height * 0.6
            canvas.shadow(self.ground_quad(x, x - side * reach, z0, z1), rng.uniform(0.55, 0.8))
        window = _tone(rng, (40, 50, 65) if rng.random() < 0.7 else (150, 170, 190), 15)
        frame_w, floor = rng.uniform(0.9, 1.6), rng.uniform(2.8, 3.5)
        spacing = frame_w + rng.uniform(0.8, 2.0)
        if not self.visible(z0, frame_w, 2.0):
            return
        y = rng.uniform(0.8, 1.5)
        while y + 1.6 < height:
            z = z0 + rng.uniform(0.3, 1.0)
            while z + frame_w < z1 and self.visible(z, frame_w, 2.0):
                canvas.polygon(self.side_quad(x, y, y + 1.5, z, z + frame_w),
                               _tone(rng, window, 6), BUILDING)
                z += spacing
            y += floor
        if rng.random() < 0.5 and self.visible(z0, 2.0):  # a shop door at street level
            z = rng.uniform(z0, max(z0, z1 - 2.5))
            canvas.polygon(self.side_quad(x, 0, 2.3, z, z + 1.6), _tone(rng, (50, 40, 35), 10),
                           BUILDING)

    def _park(self, canvas: _Canvas, x: float, z0: float, z1: float, side: int) -> None:
        """A gap between buildings: a hedge and trees, sky above."""
        rng = self.rng
        hedge = _tone(rng, (60, 100, 40), 15)
        canvas.polygon(self.side_quad(x, 0, rng.uniform(0.8, 2.0), z0, z1), hedge, VEGETATION)
        z = z0 + rng.uniform(1, 4)
        while z < z1:
            self._tree(canvas, x - side * rng.uniform(0.5, 3), z)
            z += rng.uniform(4, 9)

    def _fence(self, canvas: _Canvas, x: float, z0: float, z1: float, height: float) -> None:
        """Posts and rails along the street: see-through, only the bars are fence."""
        rng, cam = self.rng, self.cam
        color = _gray(rng, 70, 180) if rng.random() < 0.6 else _tone(rng, (150, 120, 90), 15)
        for y in (height * 0.3, height * 0.95):
            canvas.line([cam(x, y, z0), cam(x, y, z1)], color, FENCE, max(1, cam.scale(z0) * 0.06))
        step = rng.uniform(0.15, 1.5)
        z = z0
        while z < z1:
            canvas.line([cam(x, 0, z), cam(x, height, z)], color, FENCE,
                        max(1, cam.scale(z) * 0.06))
            z += step * (1 + z / 30)

    # ------------------------------------------------------------------ objects
    def place_objects(self) -> None:
        rng = self.rng
        lo = self.z_bottom * 1.05
        # (mean count, nearest depth beyond `lo`, farthest depth (metres), painter)
        for rate, near, far, painter in ((5.0, 2, 60, self._car), (0.4, 4, 60, self._big_vehicle),
                                         (2.5, 0, 40, self._person), (0.8, 1, 40, self._cyclist),
                                         (3.5, 0, 60, self._pole)):
            for _ in range(rng.poisson(rate)):
                self.objects.append((rng.uniform(lo + near, far), painter))
        for _ in range(rng.poisson(1.5)):
            z = rng.uniform(lo, 50)
            side = rng.choice([-1, 1])
            edge = self.walk_left if side < 0 else self.walk_right
            x = edge + side * rng.uniform(-0.8, 0.5)
            self.objects.append((z, lambda c, z, x=x: self._tree(c, x, z)))
        if rng.random() < 0.3:
            z = rng.uniform(lo + 5, 40)
            x = rng.choice([self.walk_left + 0.2, self.walk_right - 0.2])
            length, height = rng.uniform(5, 20), rng.uniform(0.8, 1.3)
            self.objects.append((z, lambda c, z, x=x: self._fence(c, x, z, z + length, height)))

    def draw_objects(self, canvas: _Canvas) -> None:
        for z, painter in sorted(self.objects, key=lambda item: -item[0]):
            painter(canvas, z)

    def _lane_x(self, width: float) -> float:
        return self.rng.uniform(self.road_left + width / 2 + 0.1, self.road_right - width / 2 - 0.1)

    def _box(self, canvas, x0, x1, y0, y1, z0, z1, color: Color, cls: int) -> None:
        """A solid box: the side facing the street axis, the top if below the camera, the
        rear face last (it is nearest)."""
        darker = tuple(int(c * 0.8) for c in color)
        if x0 > 0:
            canvas.polygon(self.side_quad(x0, y0, y1, z0, z1), darker, cls)
        elif x1 < 0:
            canvas.polygon(self.side_quad(x1, y0, y1, z0, z1), darker, cls)
        if y1 < self.cam.height:
            top = tuple(min(int(c * 1.1) + 8, 255) for c in color)
            canvas.polygon(self.ground_quad(x0, x1, z0, z1, y1), top, cls)
        canvas.rect(*self.front_rect(x0, x1, y0, y1, z0), color, cls)

    def _wheels(self, canvas, x0, x1, z0, z1, radius, cls) -> None:
        """Dark tyres: ellipses on the visible side face, stubs under the rear face."""
        tyre = _tone(self.rng, (25, 25, 28), 5)
        side_x = x0 if x0 > 0 else (x1 if x1 < 0 else None)
        if side_x is not None:
            for zc in (z0 + radius * 2.2, z1 - radius * 2.2):
                u0, v0 = self.cam(side_x, 2 * radius, zc - radius)
                u1, v1 = self.cam(side_x, 0, zc + radius)
                canvas.ellipse(u0, v0, u1, v1, tyre, cls)
        for xw in (x0 + 0.05, x1 - 0.3):
            canvas.rect(*self.front_rect(xw, xw + 0.25, 0, radius, z0 + 0.05), tyre, cls)

    def _car(self, canvas: _Canvas, z: float) -> None:
        rng = self.rng
        if rng.random() < 0.4:  # parked along a curb
            x0 = (self.road_left + 0.3) if rng.random() < 0.5 else (self.road_right - 2.1)
        else:
            x0 = self._lane_x(1.8) - 0.9
        width, length = rng.uniform(1.6, 1.95), rng.uniform(3.8, 4.8)
        x1, z1 = x0 + width, z + length
        body = _tone(rng, _pick(rng, [(150, 20, 20), (30, 40, 120), (200, 200, 205), (40, 40, 45),
                                      (120, 120, 125), (20, 70, 40), (160, 150, 130)]), 20)
        low, belt, roof = 0.25, rng.uniform(0.85, 1.05), rng.uniform(1.35, 1.6)
        self._box(canvas, x0, x1, low, belt, z, z1, body, CAR)
        self._box(canvas, x0 + 0.12, x1 - 0.12, belt, roof, z + 0.8, z1 - 1.0, body, CAR)
        glass = _tone(rng, (45, 55, 70), 10)
        window = self.front_rect(x0 + 0.22, x1 - 0.22, belt + 0.05, roof - 0.08, z + 0.8)
        canvas.rect(*window, glass, CAR)
        lamp = _tone(rng, (200, 30, 30), 15)
        for xl in (x0 + 0.08, x1 - 0.33):
            canvas.rect(*self.front_rect(xl, xl + 0.25, belt - 0.25, belt - 0.1, z), lamp, CAR)
        self._wheels(canvas, x0, x1, z, z1, 0.32, CAR)

    def _big_vehicle(self, canvas: _Canvas, z: float) -> None:
        rng = self.rng
        kind = int(rng.choice([TRUCK, BUS, TRAIN], p=[0.45, 0.4, 0.15]))
        width = 2.5
        x0 = self._lane_x(width) - width / 2 if kind != TRAIN else (
            (self.road_left + self.road_right) / 2 - width / 2)
        x1 = x0 + width
        if kind == TRUCK:
            length, height = rng.uniform(6, 10), rng.uniform(3.0, 3.8)
            cargo = _tone(rng, _pick(rng, [(200, 200, 200), (150, 40, 30), (60, 80, 120)]), 15)
            self._box(canvas, x0, x1, 0.6, height, z, z + length, cargo, TRUCK)
            canvas.rect(*self.front_rect(x0 + 0.2, x1 - 0.2, 0.5, 0.75, z), (40, 40, 40), TRUCK)
            self._wheels(canvas, x0, x1, z, z + length, 0.5, TRUCK)
            return
        length = rng.uniform(10, 14) if kind == BUS else rng.uniform(20, 30)
        height = rng.uniform(2.9, 3.3) if kind == BUS else rng.uniform(3.3, 3.7)
        paint = _tone(rng, _pick(rng, [(210, 180, 30), (200, 40, 40), (230, 230, 230),
                                       (40, 90, 160)]), 15)
        bottom = 0.35 if kind == BUS else 0.2
        self._box(canvas, x0, x1, bottom, height, z, z + length, paint, kind)
        glass = _tone(rng, (40, 55, 70), 8)
        side_x = x0 if x0 > 0 else (x1 if x1 < 0 else None)
        if side_x is not None:  # a band of windows along the side
            band = self.side_quad(side_x, 1.3, height - 0.4, z + 0.5, z + length - 0.5)
            canvas.polygon(band, glass, kind)
            step = 1.4
            for k in range(1, int(length / step)):
                zk = z + k * step
                canvas.line([self.cam(side_x, 1.3, zk), self.cam(side_x, height - 0.4, zk)],
                            paint, kind, max(1, self.cam.scale(zk) * 0.08))
        canvas.rect(*self.front_rect(x0 + 0.2, x1 - 0.2, 1.4, height - 0.3, z), glass, kind)
        if kind == BUS:
            self._wheels(canvas, x0, x1, z, z + length, 0.5, BUS)

    def _figure(self, canvas: _Canvas, x: float, z: float, height: float, cls: int,
                seated: bool = False, base: float = 0.0) -> None:
        """A person seen front or back: legs, torso, arms, head; ``base`` lifts it up."""
        rng, cam = self.rng, self.cam
        s = height / 1.75
        skin = _tone(rng, _pick(rng, [(230, 190, 160), (170, 120, 90), (110, 75, 55)]), 10)
        shirt = _tone(rng, rng.uniform(20, 230, 3), 10)
        trousers = _tone(rng, _pick(rng, [(40, 40, 60), (30, 30, 30), (90, 80, 70),
                                          (60, 70, 110)]), 10)
        hip, shoulder = base + (0.5 if seated else 0.85) * s, base + (1.0 if seated else 1.45) * s
        stride = rng.uniform(-0.15, 0.15) * s
        for side in (-1, 1):
            foot = x + side * 0.1 * s + (stride * side if not seated else side * 0.2 * s)
            foot_y = max(base - 0.35 * s, 0) if seated else 0
            canvas.line([cam(x + side * 0.08 * s, hip, z), cam(foot, foot_y, z)],
                        trousers, cls, cam.scale(z) * 0.14 * s)
        canvas.polygon([cam(x - 0.2 * s, shoulder, z), cam(x + 0.2 * s, shoulder, z),
                        cam(x + 0.16 * s, hip, z), cam(x - 0.16 * s, hip, z)], shirt, cls)
        for side in (-1, 1):
            hand_y = shoulder - 0.6 * s if not seated else shoulder - 0.3 * s
            hand_x = x + side * (0.28 if not seated else 0.45) * s
            canvas.line([cam(x + side * 0.2 * s, shoulder - 0.03, z), cam(hand_x, hand_y, z)],
                        shirt, cls, cam.scale(z) * 0.09 * s)
        u0, v0 = cam(x - 0.1 * s, shoulder + 0.3 * s, z)
        u1, v1 = cam(x + 0.1 * s, shoulder + 0.04 * s, z)
        canvas.ellipse(u0, v0, u1, v1, skin, cls)
        hair = _tone(rng, _pick(rng, [(30, 20, 15), (120, 80, 40), (200, 180, 120),
                                      (90, 90, 90)]), 8)
        canvas.ellipse(u0, v0, u1, v0 + (v1 - v0) * 0.4, hair, cls)

    def _person(self, canvas: _Canvas, z: float) -> None:
        rng = self.rng
        if rng.random() < 0.85:  # on a sidewalk, now and then crossing the road
            x = (rng.uniform(self.walk_left + 0.3, self.road_left - 0.3) if rng.random() < 0.5
                 else rng.uniform(self.road_right + 0.3, self.walk_right - 0.3))
        else:
            x = rng.uniform(self.road_left, self.road_right)
        if self.visible(z, 1.7, 3):
            self._figure(canvas, x, z, rng.uniform(1.5, 1.95), PERSON)

    def _cyclist(self, canvas: _Canvas, z: float) -> None:
        """A bicycle or motorcycle seen from the side (crossing), usually with a rider."""
        rng, cam = self.rng, self.cam
        x = rng.uniform(self.road_left + 0.8, self.road_right - 0.8)
        motor = rng.random() < 0.3
        vehicle = MOTORCYCLE if motor else BICYCLE
        r, half = (0.3, 0.7) if motor else (0.33, 0.55)  # wheel radius, half wheelbase
        if not self.visible(z, 2 * r, 3):
            return
        color = _tone(rng, rng.uniform(20, 220, 3), 10)
        px = cam.scale(z)
        ring = max(1, int(round(px * (0.12 if motor else 0.05))))
        for xc in (x - half, x + half):
            u0, v0 = cam(xc - r, 2 * r, z)
            u1, v1 = cam(xc + r, 0, z)
            canvas.ellipse(u0, v0, u1, v1, (30, 30, 30), vehicle, width=ring)
        seat = (x - 0.1, 0.75 if motor else 0.95)
        if motor:
            canvas.polygon([cam(x - half * 0.8, r, z), cam(x - 0.3, 0.85, z),
                            cam(x + half * 0.7, 0.95, z), cam(x + half * 0.6, r * 0.8, z)],
                           color, vehicle)
        else:  # the frame: rear hub, saddle, handlebar, front hub, bottom bracket, rear hub
            frame = [(x - half, r), seat, (x + half * 0.7, 0.95), (x + half, r), (x, r),
                     (x - half, r)]
            canvas.line([cam(u, v, z) for u, v in frame], color, vehicle, max(1, px * 0.05))
        if rng.random() < 0.85:
            self._figure(canvas, x - 0.05, z - 0.01, rng.uniform(1.6, 1.9), RIDER, seated=True,
                         base=seat[1] - 0.15)

    def _pole(self, canvas: _Canvas, z: float) -> None:
        rng, cam = self.rng, self.cam
        side = rng.choice([-1, 1])
        offset = rng.uniform(0.3, 1.0)
        x = self.road_left - offset if side < 0 else self.road_right + offset
        height = rng.uniform(3.0, 8.0)
        width = rng.uniform(0.1, 0.2)
        color = _gray(rng, 60, 170)
        if not self.visible(z, width, 0.7):
            return
        canvas.rect(*self.front_rect(x - width / 2, x + width / 2, 0, height, z), color, POLE)
        kind = rng.random()
        if kind < 0.4:  # a traffic sign
            size = rng.uniform(0.5, 0.8)
            y = rng.uniform(2.0, min(height, 3.2)) - size
            face = _tone(rng, _pick(rng, [(200, 30, 30), (30, 70, 170), (230, 230, 230),
                                          (230, 200, 30)]), 12)
            u0, v0, u1, v1 = self.front_rect(x - size / 2, x + size / 2, y, y + size, z - 0.05)
            shape = rng.integers(3)
            if shape == 0:
                canvas.ellipse(u0, v0, u1, v1, face, SIGN)
                canvas.ellipse(u0 + (u1 - u0) * 0.2, v0 + (v1 - v0) * 0.2, u1 - (u1 - u0) * 0.2,
                               v1 - (v1 - v0) * 0.2, (235, 235, 235), SIGN)
            elif shape == 1:
                canvas.polygon([((u0 + u1) / 2, v0), (u1, v1), (u0, v1)], face, SIGN)
            else:
                canvas.rect(u0, v0, u1, v1, face, SIGN)
        elif kind < 0.65:  # a traffic light, sometimes on an arm over the road
            arm = rng.random() < 0.4
            lx = x - side * rng.uniform(1.0, 3.0) if arm else x
            if arm:
                canvas.line([cam(x, height - 0.1, z), cam(lx, height - 0.1, z)], color, POLE,
                            max(1, cam.scale(z) * width))
            u0, v0, u1, v1 = self.front_rect(lx - 0.18, lx + 0.18, height - 1.1, height - 0.1,
                                             z - 0.05)
            canvas.rect(u0, v0, u1, v1, _tone(rng, (35, 35, 30), 6), LIGHT)
            lit = rng.integers(3)
            cu, rad = (u0 + u1) / 2, (u1 - u0) * 0.3
            for k, lamp in enumerate([(220, 40, 30), (230, 170, 30), (40, 200, 80)]):
                cv = v0 + (v1 - v0) * (k + 0.5) / 3
                tone = lamp if k == lit else tuple(c // 4 for c in lamp)  # unlit lamps are dim
                canvas.ellipse(cu - rad, cv - rad, cu + rad, cv + rad, tone, LIGHT)
        elif kind < 0.8:  # a street lamp head
            canvas.rect(*self.front_rect(x - 0.3, x + 0.3, height - 0.25, height, z), color, POLE)

    def _tree_crown(self, canvas: _Canvas, x: float, y: float, radius: float, z: float) -> None:
        rng, cam = self.rng, self.cam
        base = _tone(rng, (70, 110, 45), 20)
        blobs = 6 if self.visible(z, radius, 12) else 3
        for _ in range(blobs):
            bx, by = x + rng.normal(0, radius * 0.45), y + rng.normal(0, radius * 0.35)
            br = radius * rng.uniform(0.45, 0.8)
            u0, v0 = cam(bx - br, by + br, z)
            u1, v1 = cam(bx + br, by - br, z)
            canvas.ellipse(u0, v0, u1, v1, _tone(rng, base, 12), VEGETATION)

    def _tree(self, canvas: _Canvas, x: float, z: float) -> None:
        rng = self.rng
        height = rng.uniform(4, 11)
        trunk = rng.uniform(0.2, 0.4)
        if not self.visible(z, trunk, 0.7):
            return
        # Trunks are vegetation in Cityscapes, though brown-grey like poles and walls.
        canvas.rect(*self.front_rect(x - trunk / 2, x + trunk / 2, 0, height * 0.7, z),
                    _tone(rng, (85, 70, 55), 12), VEGETATION)
        self._tree_crown(canvas, x, height * 0.75, rng.uniform(1.5, 3.5), z)

    def draw_ego_vehicle(self, canvas: _Canvas) -> None:
        """The bonnet of the recording car along the bottom edge, labelled ignore."""
        w, h = self.width, self.height
        top = h * (1 - self.rng.uniform(0.05, 0.12))
        color = _tone(self.rng, (40, 40, 48), 10)
        curve = [(w * t, top + (h - top) * 0.5 * (2 * t - 1) ** 2) for t in np.arange(9) / 8]
        points = [(0, h), (0, top + (h - top) * 0.5), *curve, (w, top + (h - top) * 0.5), (w, h)]
        canvas.polygon(points, color, IGNORE_INDEX)


def _finish(canvas: _Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Lighting, texture and sensor noise on top of the flat-shaded drawing."""
    h, w = canvas.height, canvas.width
    rgb = np.asarray(canvas.rgb, dtype=np.float32)
    label = np.asarray(canvas.label, dtype=np.uint8).copy()
    shade = np.asarray(canvas.shade, dtype=np.float32) / 200.0

    # Smooth illumination: coarse random field upsampled bilinearly.
    coarse = rng.normal(1.0, 0.12, (3, 5)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))
    gain = rng.uniform(0.7, 1.2) * field * shade
    sky = label == SKY
    gain = np.where(sky, np.sqrt(np.maximum(gain, 0)), gain)  # the sky is its own light

    texture = _TEXTURE[label][..., None] * rng.standard_normal((h, w, 1), dtype=np.float32)
    noise = rng.normal(0.0, rng.uniform(2.0, 6.0), (h, w, 3)).astype(np.float32)
    cast = rng.normal(1.0, 0.04, 3).astype(np.float32)  # white balance
    out = (rgb + texture) * gain[..., None] * cast + noise
    return np.clip(out, 0, 255).astype(np.uint8), label


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    height, width = (int(s) for s in size)
    if height < 32 or width < 32:
        raise D3NetError(f"scene size must be at least 32x32 pixels, got {height}x{width}")
    return height, width


def generate_scene(rng: np.random.Generator,
                   size: Sequence[int] = (256, 512)) -> tuple[np.ndarray, np.ndarray]:
    """Draw one street scene.

    Args:
        rng: numpy random generator; the scene is a pure function of its state.
        size: (height, width) in pixels, each at least 32.
    Returns:
        ``(rgb, train_ids)``: uint8 arrays ``(height, width, 3)`` and ``(height, width)``
        with values in 0..18 and 255 (ignore: the ego vehicle).
    """
    height, width = _check_size(size)
    scene = _Scene(rng, height, width)
    canvas = _Canvas(width, height)
    scene.draw_sky(canvas)
    scene.draw_ground(canvas)
    scene.draw_skyline(canvas)
    scene.draw_facades(canvas)
    scene.place_objects()
    scene.draw_objects(canvas)
    if rng.random() < 0.3:
        scene.draw_ego_vehicle(canvas)
    return _finish(canvas, rng)


def split_sizes(images: int, splits: Sequence[str]) -> dict[str, int]:
    """How many images each split gets: every split after the first gets
    ``max(1, images // 5)``, the first (normally ``train``) the rest, e.g. 20 images over
    (train, val) -> 16 + 4, over (train, val, test) -> 12 + 4 + 4."""
    splits = list(splits)
    if not splits:
        raise D3NetError("at least one split is needed")
    if len(set(splits)) != len(splits):
        raise D3NetError(f"splits must be distinct, got {splits}")
    if images < len(splits):
        raise D3NetError(f"{images} image(s) cannot fill {len(splits)} splits; ask for at "
                         f"least {len(splits)}")
    others = max(1, images // 5)
    sizes = {name: others for name in splits[1:]}
    first = images - others * (len(splits) - 1)
    if first < 1:
        raise D3NetError(f"{images} image(s) cannot fill {len(splits)} splits; ask for more")
    return {splits[0]: first, **sizes}


def _save_png(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)


def generate_dataset(out: PathLike, images: int = 20,
                     size: Sequence[int] = (256, 512), seed: int = 0,
                     splits: Sequence[str] = ("train", "val"),
                     progress: bool = True) -> dict[str, int]:
    """Write a synthetic dataset in the Cityscapes layout.

    Files (``<city>_<index:06d>_000019`` named like Cityscapes frames)::

        out/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png
        out/gtFine/<split>/<city>/<name>_gtFine_labelTrainIds.png   (train ids)
        out/gtFine/<split>/<city>/<name>_gtFine_labelIds.png        (official ids)

    The ``test`` split gets images only, like the public Cityscapes test set. Images are
    shared out with :func:`split_sizes` and round robin over the split's :data:`CITIES`.
    Scene ``k`` (counted over all splits in order) is drawn from
    ``numpy.random.default_rng([seed, k])``, so the output depends only on the arguments.

    Args:
        out: output folder (created; existing files with the same names are replaced).
        images: total number of images over all splits.
        size: (height, width) of every image.
        seed: random seed.
        splits: split names, e.g. ("train", "val") or ("train", "val", "test").
        progress: show a progress bar.
    Returns:
        The number of images written per split.
    Raises:
        D3NetError: too few images, bad splits or size, or an unwritable ``out``.
    """
    out = Path(out)
    check_writable(out)
    sizes = split_sizes(int(images), splits)
    size = _check_size(size)
    jobs = []  # (split, city) of every image, cities round robin within a split
    for split, count in sizes.items():
        cities = CITIES.get(split, (split,))
        jobs += [(split, cities[k % len(cities)]) for k in range(count)]
    for index, (split, city) in enumerate(tqdm(jobs, desc="synthetic scenes", unit="image",
                                               disable=not progress)):
        rgb, train_ids = generate_scene(np.random.default_rng([seed, index]), size)
        name = f"{city}_{index:06d}_000019"
        _save_png(rgb, out / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
        if split != "test":
            labels = out / "gtFine" / split / city
            _save_png(train_ids, labels / f"{name}_gtFine_labelTrainIds.png")
            _save_png(train_ids_to_label_ids(train_ids), labels / f"{name}_gtFine_labelIds.png")
    return sizes
