"""Where every marker, label and tick of the report's accuracy-against-latency chart goes: pure geometry, so
that tests can check that nothing hides anything.

Axes fit the data (zero joins them only when the data come near it); markers grow with the model's size on
disk; labels go beside their markers where they cover no marker, label or leader line, else a letter stands
for the name in a key under the chart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WIDTH, HEIGHT = 640, 400
FRAME = (60, 16, 620, 350)  # the plot area inside the SVG: left, top, right, bottom (room for ticks and titles)
R_MIN, R_MAX = 6.0, 15.0  # marker radius of the smallest and of the largest model
FONT, GAP, LEADER = 12, 3, 14  # label font size; space between a marker and its label; extra for a leader line
PARETO_FILL = "#1f77b4"


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names of the points no other point beats: higher accuracy (first) and lower latency (second)."""
    front = set()
    for name, (acc, lat) in points.items():
        dominated = any(a >= acc and l <= lat and (a > acc or l < lat)
                        for other, (a, l) in points.items() if other != name)
        if not dominated:
            front.add(name)
    return front


@dataclass
class Axis:
    """One axis: the data range it shows, its ticks, and the pixels it spans (start: where `lo` is drawn)."""

    lo: float
    hi: float
    ticks: list[float]
    decimals: int
    start: float
    end: float

    def px(self, value: float) -> float:
        return self.start + (self.end - self.start) * (value - self.lo) / (self.hi - self.lo)


@dataclass
class Mark:
    """One model on the chart: its marker and, once placed, its label's text and box (x0, y0, x1, y1)."""

    name: str
    accuracy: float
    latency: float
    radius: float
    pareto: bool
    x: float = 0.0
    y: float = 0.0
    text: str = ""
    box: tuple[float, float, float, float] | None = None
    leader: tuple[float, float, float, float] | None = None  # x1, y1, x2, y2 when the label stands off
    key: str | None = None  # the letter that stands for the name when the name did not fit


def nice_ticks(lo: float, hi: float, target: int) -> tuple[list[float], int]:
    """Round ticks inside [lo, hi], as close to `target` of them as steps of 1, 2, 2.5 or 5 times a power of ten
    allow (the coarser step on a tie), and the decimals they need."""
    power = math.floor(math.log10((hi - lo) / target))
    steps = [(m, p) for p in (power - 1, power, power + 1) for m in (1, 2, 2.5, 5)]

    def count(step: float) -> int:
        return math.floor(hi / step + 1e-9) - math.ceil(lo / step - 1e-9) + 1

    mult, power = min(steps, key=lambda s: (abs(count(s[0] * 10.0 ** s[1]) - target), -s[0] * 10.0 ** s[1]))
    step = mult * 10.0 ** power
    first = math.ceil(lo / step - 1e-9)
    ticks = [round((first + i) * step, 12) for i in range(count(step))]
    return ticks, max(0, -power + (1 if mult == 2.5 else 0))  # 0.25 needs two decimals, 25 none


def axis_range(values: list[float], length: float, margin: float,
               ceiling: float | None = None) -> tuple[float, float]:
    """The data range that puts the smallest and largest value `margin` pixels inside an axis `length` long.

    Zero joins the data when the data come close to it (the smallest value is within a quarter of the spread),
    so a range like 0.02-0.9 reads from 0, but 5.0-6.0 ms keeps its own scale instead of being squeezed
    into the last sixth of a 0-6.9 axis.
    """
    low, high = min(values), max(values)
    if 0 <= low <= 0.25 * (high - low):
        low = 0.0
    if high - low < 1e-12:  # one value (or equal ones): a small window around it, inside what the metric can take
        half = abs(high) * 0.05 or 1.0
        low, high = max(low - half, 0.0) if low >= 0 else low - half, high + half
        if ceiling is not None and low < ceiling < high:
            high = ceiling
    per_pixel = (high - low) / (length - 2 * margin)
    return low - margin * per_pixel, high + margin * per_pixel


def _axis(values: list[float], start: float, end: float, margin: float, target: int,
          ceiling: float | None) -> Axis:
    lo, hi = axis_range(values, abs(end - start), margin, ceiling)
    ticks, decimals = nice_ticks(lo, hi, target)
    # the margin may reach past what the metric can take: no tick for a latency below 0 or an accuracy above 1
    ticks = [t for t in ticks if t >= 0 and (ceiling is None or t <= ceiling)]
    return Axis(lo, hi, ticks, decimals, start, end)


def _radius(size: float | None, largest: float | None) -> float:
    """Marker radius: grows with the square root of the size on disk, from R_MIN towards R_MAX for the largest
    model; without sizes every marker is the same middling one."""
    if not size or not largest:
        return 7.0
    return R_MIN + (R_MAX - R_MIN) * math.sqrt(size / largest)


def text_width(text: str) -> float:
    """A generous estimate of `text`'s width in pixels at the label font size (no browser to measure it)."""
    wide = sum(1 for c in text if c.isupper() or c in "mw@%")
    return (0.6 * (len(text) - wide) + 0.85 * wide) * FONT + 2


def _spots(mark: Mark, reach: float, width: float, height: float) -> list[tuple[float, float, float, float]]:
    """Label boxes `reach` from a marker's centre, in order of preference: right, left, above, below, diagonals."""
    x, y, d = mark.x, mark.y, reach * 0.7071
    corners = [(x + reach, y - height / 2), (x - reach - width, y - height / 2), (x - width / 2, y - reach - height),
               (x - width / 2, y + reach), (x + d, y - d - height), (x - d - width, y - d - height),
               (x + d, y + d), (x - d - width, y + d)]
    return [(x0, y0, x0 + width, y0 + height) for x0, y0 in corners]


def boxes_overlap(a: tuple, b: tuple) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def box_hits_circle(box: tuple, x: float, y: float, r: float) -> bool:
    nearest_x, nearest_y = min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3])
    return (nearest_x - x) ** 2 + (nearest_y - y) ** 2 < r * r


def _leader(mark: Mark, box: tuple) -> tuple[float, float, float, float]:
    """A line from the marker's edge to the nearest point of its label's box."""
    to_x, to_y = min(max(mark.x, box[0]), box[2]), min(max(mark.y, box[1]), box[3])
    length = math.hypot(to_x - mark.x, to_y - mark.y)
    return (mark.x + (to_x - mark.x) * mark.radius / length, mark.y + (to_y - mark.y) * mark.radius / length,
            to_x, to_y)


def line_points(line: tuple, count: int = 12) -> list[tuple[float, float]]:
    """Points along a line, its ends left out (they touch the marker and the label they join)."""
    return [(line[0] + (line[2] - line[0]) * i / count, line[1] + (line[3] - line[1]) * i / count)
            for i in range(1, count)]


def _clear(box: tuple, leader: tuple | None, mark: Mark, marks: list[Mark], taken: list[tuple],
           lines: list[tuple], frame: tuple) -> bool:
    """Whether a label box (and its leader) stays in the frame and covers no marker, label or leader already drawn."""
    if not (frame[0] <= box[0] and box[2] <= frame[2] and frame[1] <= box[1] and box[3] <= frame[3]):
        return False
    if any(boxes_overlap(box, t) for t in taken) or any(box_hits_circle(box, m.x, m.y, m.radius + 1) for m in marks):
        return False
    if any(boxes_overlap((x, y, x, y), box) for line in lines for x, y in line_points(line)):
        return False
    points = line_points(leader) if leader else []
    return not any(boxes_overlap((x, y, x, y), t) for x, y in points for t in taken) and not any(
        math.hypot(x - m.x, y - m.y) < m.radius for x, y in points for m in marks if m is not mark)


def _free_spot(mark: Mark, text: str, marks: list[Mark], taken: list[tuple], lines: list[tuple],
               frame: tuple) -> tuple[tuple | None, tuple | None]:
    """The first free box for `text` next to the marker, else a little further out with a leader line."""
    width, height = text_width(text), FONT + 2
    for reach, with_leader in ((mark.radius + GAP, False), (mark.radius + GAP + LEADER, True)):
        for box in _spots(mark, reach, width, height):
            leader = _leader(mark, box) if with_leader else None
            if _clear(box, leader, mark, marks, taken, lines, frame):
                return box, leader
    return None, None


def place_labels(marks: list[Mark], frame: tuple) -> None:
    """Give each mark a label that hides nothing; a name that fits nowhere becomes a letter in a key.

    Crowded marks choose first, while there is still room around them. Letters, not numbers: search
    candidates are already named #1, #2, ...
    """
    def neighbours(m: Mark) -> int:
        return sum(1 for o in marks if o is not m and abs(o.x - m.x) < 80 and abs(o.y - m.y) < 40)

    taken: list[tuple] = []
    lines: list[tuple] = []
    letters = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    for mark in sorted(marks, key=lambda m: (-neighbours(m), m.x)):
        mark.text = mark.name
        mark.box, mark.leader = _free_spot(mark, mark.name, marks, taken, lines, frame)
        if mark.box is None:
            mark.key = mark.text = next(letters, "*")
            mark.box, mark.leader = _free_spot(mark, mark.key, marks, taken, lines, frame)
        taken += [mark.box] if mark.box else []
        lines += [mark.leader] if mark.leader else []


def spread_coincident(marks: list[Mark], apart: float = 4.0) -> None:
    """Markers drawn at one spot (models of equal accuracy and latency, say a model measured twice) are set on a
    ring around it, far enough apart that none covers another, and kept inside the plot; hovering one still
    gives its exact numbers."""
    groups: list[list[Mark]] = []
    for mark in marks:
        near = next((g for g in groups if abs(g[0].x - mark.x) < apart and abs(g[0].y - mark.y) < apart), None)
        if near is None:
            groups.append([mark])
        else:
            near.append(mark)
    for group in (g for g in groups if len(g) > 1):
        x, y = group[0].x, group[0].y
        reach = (max(m.radius for m in group) + 1) / math.sin(math.pi / len(group))  # neighbours' centres 2r apart
        for k, mark in enumerate(group):
            angle = math.pi * (1 + 2 * k / len(group))  # the first to the left, then round
            mark.x, mark.y = x + reach * math.cos(angle), y - reach * math.sin(angle)
        for axis, (low, high) in (("x", (FRAME[0], FRAME[2])), ("y", (FRAME[1], FRAME[3]))):  # the ring moved inside
            under = max(low + m.radius - getattr(m, axis) for m in group)
            over = max(getattr(m, axis) + m.radius - high for m in group)
            shift = under if under > 0 else -over if over > 0 else 0.0
            for mark in group:
                setattr(mark, axis, getattr(mark, axis) + shift)


def chart_layout(models: dict) -> tuple[list[Mark], Axis, Axis]:
    """Where every marker, label and tick goes: pure geometry, so tests can check that nothing hides anything."""
    points = {role: (m["accuracy"], m["latency_ms"]["p50"]) for role, m in models.items()
              if finite(m.get("accuracy")) and finite((m.get("latency_ms") or {}).get("p50"))}
    front = pareto_front(points)
    if any("pareto" in m for m in models.values()):  # search candidates: the frontier over every ranked metric
        front = {role for role, m in models.items() if m.get("pareto")}
    largest = max((models[r].get("size_mb") or 0 for r in points), default=0)
    marks = [Mark(role, acc, lat, _radius(models[role].get("size_mb"), largest), role in front)
             for role, (acc, lat) in points.items()]
    if not marks:
        return [], None, None
    margin = max(m.radius for m in marks) + GAP + 2  # the outermost markers stay clear of the axes
    x_axis = _axis([m.latency for m in marks], FRAME[0], FRAME[2], margin, 6, None)
    y_axis = _axis([m.accuracy for m in marks], FRAME[3], FRAME[1], margin, 5, 1.0)
    for m in marks:
        m.x, m.y = x_axis.px(m.latency), y_axis.px(m.accuracy)
    spread_coincident(marks)
    place_labels(marks, FRAME)
    return marks, x_axis, y_axis
