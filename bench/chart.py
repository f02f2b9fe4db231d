"""A timeline of one turn per system: a lane per stage, on one time axis from the end of the user's input."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bench.metrics import ALL_STAGES
from bench.systems import TurnRecord

WIDTH = 1400
LEFT = 150  # lane labels
RIGHT = 30
LANE = 20
HEADER = 26
GAP = 16
AXIS = 50
LEGEND = 30
COLOURS = {
    "input": (180, 180, 180),
    "audio encoder": (140, 86, 75),
    "vision encoder": (227, 119, 194),
    "thinker": (31, 119, 180),
    "talker": (255, 127, 14),
    "DiT": (44, 160, 44),
    "BigVGAN": (148, 103, 189),
    "code predictor": (188, 189, 34),
    "code2wav": (44, 160, 44),
}
MARKERS = {"end of input": (0, 0, 0), "first text": (31, 119, 180), "first audio": (214, 39, 40), "done": (110, 110, 110)}


def _ticks(low: float, high: float, count: int = 10) -> list[float]:
    raw = (high - low) / count
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if raw <= step * factor:
            step *= factor
            break
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def draw_timeline(records: list[TurnRecord], path: str | Path, title: str) -> Path:
    lanes = ["input"] + [s for s in ALL_STAGES if any(span.stage == s for r in records for span in r.spans)]
    start = min([0.0] + [r.input_start for r in records if r.input_start is not None] + [s.start for r in records for s in r.spans])
    end = max(r.total for r in records) or 1.0
    panel = HEADER + LANE * len(lanes)
    height = HEADER + len(records) * (panel + GAP) + AXIS + LEGEND
    image = Image.new("RGB", (WIDTH, height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    scale = (WIDTH - LEFT - RIGHT) / (end - start)

    def x(seconds: float) -> float:
        return LEFT + (seconds - start) * scale

    draw.text((10, 6), title, fill="black", font=font)
    top = HEADER
    for record in records:
        draw.text((10, top + 6), record.system, fill="black", font=font)
        for index, lane in enumerate(lanes):
            y = top + HEADER + index * LANE
            draw.text((20, y + 4), lane, fill=(60, 60, 60), font=font)
            draw.line([(LEFT, y + LANE - 1), (WIDTH - RIGHT, y + LANE - 1)], fill=(235, 235, 235))
            if lane == "input":
                spans = [(record.input_start if record.input_start is not None else 0.0, 0.0)]
            else:
                spans = sorted((s.start, s.end) for s in record.spans if s.stage == lane)
            merged: list[list[float]] = []
            for a, b in spans:  # calls closer than a pixel are one bar
                if merged and (a - merged[-1][1]) * scale < 1:
                    merged[-1][1] = max(merged[-1][1], b)
                else:
                    merged.append([a, b])
            for a, b in merged:
                if b > a or lane == "input":
                    draw.rectangle([x(a), y + 3, max(x(b), x(a) + 1), y + LANE - 4], fill=COLOURS[lane])
        marks = {"end of input": 0.0, "first text": record.first_text, "first audio": record.first_audio, "done": record.total}
        for name, at in marks.items():
            if at is not None:
                draw.line([(x(at), top + HEADER - 4), (x(at), top + panel)], fill=MARKERS[name], width=2)
        top += panel + GAP
    for tick in _ticks(start, end):
        draw.line([(x(tick), top), (x(tick), top + 5)], fill="black")
        draw.text((x(tick) - 10, top + 8), f"{tick:g}", fill="black", font=font)
    draw.text((LEFT, top + 24), "seconds from the end of the user's input", fill="black", font=font)
    legend_x, legend_y = LEFT, top + AXIS
    for name, colour in MARKERS.items():
        draw.line([(legend_x, legend_y), (legend_x, legend_y + 12)], fill=colour, width=2)
        draw.text((legend_x + 6, legend_y), name, fill="black", font=font)
        legend_x += 110
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
