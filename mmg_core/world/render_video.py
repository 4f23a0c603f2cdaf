"""Frames of each scene, drawn with anti-aliased shapes in a 64-pixel layout scaled to config.size.

All shapes are vectorised over frames: positions are (F, 1, 1) arrays broadcast against the
(1, H, W) pixel grid, so a clip is a handful of numpy operations.
"""

from __future__ import annotations

import math

import numpy as np

from .config import BACKGROUNDS, COLOURS, PROP_GREY, WorldConfig
from .spec import ClipSpec
from .timeline import Timeline

# Layout constants in 64-pixel units.
FLOOR_Y = 56.0  # ball scene: top of the floor band
BALL_RADIUS = 7.0
BALL_MAX_HEIGHT = 34.0  # apex of the highest bounce above the contact position
DRUM_TOP, DRUM_BOTTOM, DRUM_HALF_WIDTH = 36.0, 54.0, 16.0
STICK_PIVOT = (14.0, 20.0)  # (y, dx from the drum centre)
STICK_KNOB = 3.0
STICK_HALF_WIDTH = 1.5
STICK_MAX_LIFT_DEG = 65.0
LAMP_BULB_Y, LAMP_BULB_RADIUS = 27.0, 11.0
SLIDER_TOP, SLIDER_BOTTOM = 10.0, 54.0  # bar centre at height 1 and 0
SLIDER_HALF_WIDTH, SLIDER_HALF_HEIGHT = 14.0, 3.0


def _grid(size: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(1, H, W) pixel-centre coordinates in layout units."""
    coords = (np.arange(size, dtype=np.float32) + 0.5) / scale
    return coords[None, :, None], coords[None, None, :]


def _disc(yy, xx, cy, cx, radius, scale):
    distance = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return np.clip((radius - distance) * scale + 0.5, 0.0, 1.0)


def _box(yy, xx, y0, y1, x0, x1, scale):
    inside = np.minimum(np.minimum(yy - y0, y1 - yy), np.minimum(xx - x0, x1 - xx))
    return np.clip(inside * scale + 0.5, 0.0, 1.0)


def _segment(yy, xx, p, q, half_width, scale):
    """Thick line from p to q; p, q are (y, x) pairs of (F, 1, 1) arrays or floats."""
    dy, dx = q[0] - p[0], q[1] - p[1]
    t = np.clip(((yy - p[0]) * dy + (xx - p[1]) * dx) / (dy * dy + dx * dx), 0.0, 1.0)
    distance = np.sqrt((yy - p[0] - t * dy) ** 2 + (xx - p[1] - t * dx) ** 2)
    return np.clip((half_width - distance) * scale + 0.5, 0.0, 1.0)


def _paint(canvas: np.ndarray, alpha: np.ndarray, rgb) -> None:
    """Alpha-blend a colour into our own (F, H, W, 3) canvas."""
    alpha = np.broadcast_to(alpha, canvas.shape[:3])[..., None]
    canvas += alpha * (np.asarray(rgb, np.float32) - canvas)


def _column(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, np.float32)[:, None, None]


def _draw_ball(canvas, yy, xx, spec, timeline, scale):
    _paint(canvas, _box(yy, xx, FLOOR_Y, 1e3, -1e3, 1e3, scale), PROP_GREY)
    cy = FLOOR_Y - BALL_RADIUS - BALL_MAX_HEIGHT * spec.amplitude * _column(timeline.motion)
    _paint(canvas, _disc(yy, xx, cy, spec.x, BALL_RADIUS, scale), COLOURS[spec.colour])


def stick_tip(spec: ClipSpec, lift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of the stick's knob centre; at lift 0 the knob rests on the drum head."""
    pivot_y, pivot_x = STICK_PIVOT[0], spec.x + STICK_PIVOT[1]
    rest_y, rest_x = DRUM_TOP - STICK_KNOB, spec.x
    length = math.hypot(rest_y - pivot_y, rest_x - pivot_x)
    rest_angle = math.atan2(rest_y - pivot_y, rest_x - pivot_x)
    # Rotating towards larger angles (y down) swings the tip up and away from the drum.
    angle = rest_angle + np.radians(STICK_MAX_LIFT_DEG * spec.amplitude) * lift
    return pivot_y + length * np.sin(angle), pivot_x + length * np.cos(angle)


def _draw_drum(canvas, yy, xx, spec, timeline, scale):
    box = _box(yy, xx, DRUM_TOP, DRUM_BOTTOM, spec.x - DRUM_HALF_WIDTH, spec.x + DRUM_HALF_WIDTH, scale)
    _paint(canvas, box, COLOURS[spec.colour])
    tip_y, tip_x = (_column(v) for v in stick_tip(spec, timeline.motion))
    pivot = (STICK_PIVOT[0], spec.x + STICK_PIVOT[1])
    stick = np.maximum(
        _segment(yy, xx, pivot, (tip_y, tip_x), STICK_HALF_WIDTH, scale),
        _disc(yy, xx, tip_y, tip_x, STICK_KNOB, scale),
    )
    _paint(canvas, stick, PROP_GREY)


def _draw_lamp(canvas, yy, xx, spec, timeline, scale):
    stand = np.maximum(
        _box(yy, xx, 36.0, 56.0, spec.x - 1.5, spec.x + 1.5, scale),
        _box(yy, xx, 54.0, 58.0, spec.x - 10.0, spec.x + 10.0, scale),
    )
    _paint(canvas, stand, PROP_GREY)
    bulb = _disc(yy, xx, LAMP_BULB_Y, spec.x, LAMP_BULB_RADIUS, scale)
    lit = _column(timeline.motion)
    _paint(canvas, bulb * (1.0 - lit), PROP_GREY)  # unlit bulb: grey glass
    _paint(canvas, bulb * lit, COLOURS[spec.colour])


def slider_bar_y(height: np.ndarray) -> np.ndarray:
    """Bar centre row (layout units) for a height in [0, 1]."""
    return SLIDER_BOTTOM - (SLIDER_BOTTOM - SLIDER_TOP) * height


def _draw_slider(canvas, yy, xx, spec, timeline, scale):
    _paint(canvas, _box(yy, xx, 6.0, 58.0, spec.x - 1.0, spec.x + 1.0, scale), PROP_GREY)
    cy = _column(slider_bar_y(timeline.motion))
    bar = _box(
        yy,
        xx,
        cy - SLIDER_HALF_HEIGHT,
        cy + SLIDER_HALF_HEIGHT,
        spec.x - SLIDER_HALF_WIDTH,
        spec.x + SLIDER_HALF_WIDTH,
        scale,
    )
    _paint(canvas, bar, COLOURS[spec.colour])


_DRAW = {"ball": _draw_ball, "drum": _draw_drum, "lamp": _draw_lamp, "slider": _draw_slider}


def render_frames(spec: ClipSpec, timeline: Timeline, config: WorldConfig) -> np.ndarray:
    """(F, H, W, 3) float32 RGB in 0..255."""
    canvas = np.empty((config.frames, config.size, config.size, 3), np.float32)
    canvas[...] = np.asarray(BACKGROUNDS[spec.background], np.float32)
    yy, xx = _grid(config.size, config.scale)
    _DRAW[spec.scene](canvas, yy, xx, spec, timeline, config.scale)
    return canvas
