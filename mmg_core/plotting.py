"""Tiny dependency-free line plots (PIL) for training curves; no matplotlib needed at run time."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def line_plot(
    path: str | Path,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    title: str,
    x_label: str = "step",
    log_y: bool = True,
    size: tuple[int, int] = (900, 500),
) -> None:
    """Write a PNG with one line per series (name -> (xs, ys)); log10 y axis by default."""
    width, height = size
    left, right, top, bottom = 70, 20, 40, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    transform = (lambda v: math.log10(max(v, 1e-12))) if log_y else (lambda v: v)
    points = [(x, transform(y)) for xs, ys in series.values() for x, y in zip(xs, ys) if math.isfinite(y)]
    draw.text((left, 10), title, fill="black")
    if not points:
        draw.text((left, height // 2), "no data yet", fill="black")
        image.save(path)
        return
    x_min, x_max = min(p[0] for p in points), max(p[0] for p in points)
    y_min, y_max = min(p[1] for p in points), max(p[1] for p in points)
    x_max, y_max = (x_max if x_max > x_min else x_min + 1), (y_max if y_max > y_min else y_min + 1e-3)

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_min) / (x_max - x_min) * (width - left - right),
                height - bottom - (y - y_min) / (y_max - y_min) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for y in _ticks(y_min, y_max):
        _, py = to_pixel(x_min, y)
        draw.line([left - 4, py, left, py], fill="black")
        draw.text((5, py - 6), f"{10 ** y:.3g}" if log_y else f"{y:.3g}", fill="black")
    for x in _ticks(x_min, x_max):
        px, _ = to_pixel(x, y_min)
        draw.line([px, height - bottom, px, height - bottom + 4], fill="black")
        draw.text((px - 15, height - bottom + 8), f"{x:.0f}", fill="black")
    draw.text((width // 2 - 20, height - 18), x_label, fill="black")
    for index, (name, (xs, ys)) in enumerate(series.items()):
        colour = PALETTE[index % len(PALETTE)]
        line = [to_pixel(x, transform(y)) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        draw.text((width - right - 160, top + 8 + 14 * index), name, fill=colour)
    image.save(path)
