"""A synthetic "shapes" world for vision-language training, made here from a seed (numpy + Pillow).

A scene is 1-3 coloured shapes (circle, square, triangle), each in its own cell of a 2x2 grid, drawn
on a 32x32 canvas with a little jitter. Each scene comes with a caption and questions whose answers
are one or two words: the colour of a shape, the shape of a colour, how many shapes, where a shape
is, and whether one shape is left of / above another. Held-out scenes are a fixed set that training
never draws (checked by content, not by seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS = {"red": (220, 45, 45), "green": (40, 170, 70), "blue": (50, 90, 225), "yellow": (235, 205, 40),
          "purple": (150, 60, 190), "white": (245, 245, 245)}
SHAPES = ("circle", "square", "triangle")
CELLS = {(0, 0): "top left", (1, 0): "top right", (0, 1): "bottom left", (1, 1): "bottom right"}
COUNTS = {1: "one", 2: "two", 3: "three"}
IMAGE_SIZE = 32


@dataclass(frozen=True)
class Thing:
    shape: str
    color: str
    cell: tuple[int, int]


def random_scene(rng: np.random.Generator) -> tuple[Thing, ...]:
    n = int(rng.integers(1, 4))
    cells = rng.permutation(len(CELLS))[:n]
    colors = rng.permutation(len(COLORS))[:n]  # distinct colours, so "the red shape" is unambiguous
    cell_list = list(CELLS)
    return tuple(Thing(SHAPES[int(rng.integers(3))], list(COLORS)[int(c)], cell_list[int(k)])
                 for c, k in zip(colors, cells))


def render(scene: tuple[Thing, ...], rng: np.random.Generator, size: int = IMAGE_SIZE) -> Image.Image:
    img = Image.new("RGB", (size, size), (20, 20, 20))
    draw = ImageDraw.Draw(img)
    half = size // 2
    for t in scene:
        r = int(rng.integers(size // 6, size // 4))  # radius
        cx = t.cell[0] * half + half // 2 + int(rng.integers(-1, 2))
        cy = t.cell[1] * half + half // 2 + int(rng.integers(-1, 2))
        box = (cx - r, cy - r, cx + r, cy + r)
        if t.shape == "circle":
            draw.ellipse(box, fill=COLORS[t.color])
        elif t.shape == "square":
            draw.rectangle(box, fill=COLORS[t.color])
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLORS[t.color])
    return img


def caption(scene: tuple[Thing, ...]) -> str:
    things = sorted(scene, key=lambda t: (t.cell[1], t.cell[0]))
    return " and ".join(f"a {t.color} {t.shape}" for t in things)


def questions(scene: tuple[Thing, ...]) -> dict[str, list[tuple[str, str]]]:
    """(question, answer) pairs that the scene answers without ambiguity, by category."""
    qa: dict[str, list[tuple[str, str]]] = {"count": [("how many shapes?", COUNTS[len(scene)])], "color": [],
                                            "shape": [], "where": [], "relative": []}
    for t in scene:
        if sum(s.shape == t.shape for s in scene) == 1:
            qa["color"].append((f"what color is the {t.shape}?", t.color))
        qa["shape"].append((f"what shape is {t.color}?", t.shape))
        qa["where"].append((f"where is the {t.color} shape?", CELLS[t.cell]))
        for o in scene:  # relative position, asked only where the answer is clear
            if o.cell[0] != t.cell[0]:
                qa["relative"].append((f"is the {t.color} shape left of the {o.color} shape?",
                                       "yes" if t.cell[0] < o.cell[0] else "no"))
            if o.cell[1] != t.cell[1]:
                qa["relative"].append((f"is the {t.color} shape above the {o.color} shape?",
                                       "yes" if t.cell[1] < o.cell[1] else "no"))
    return {k: v for k, v in qa.items() if v}


@dataclass
class Example:
    image: Image.Image
    scene: tuple[Thing, ...]
    prompt: str
    answer: str


def example(seed: int, task: str = "vqa") -> Example:
    """One image with one prompt and answer: task 'vqa' asks a question, 'caption' asks for the caption."""
    rng = np.random.default_rng(seed)
    scene = random_scene(rng)
    image = render(scene, rng)
    if task == "caption":
        return Example(image, scene, "caption en", caption(scene))
    by_kind = questions(scene)
    kind = list(by_kind)[int(rng.integers(len(by_kind)))]  # a category first, so each is asked often
    q, a = by_kind[kind][int(rng.integers(len(by_kind[kind])))]
    return Example(image, scene, q, a)


HELD_OUT_BASE = 10**9  # held-out seeds start here; training seeds stay below


def held_out(n: int, task: str = "vqa") -> list[Example]:
    return [example(HELD_OUT_BASE + i, task) for i in range(n)]


def all_words() -> str:
    """Every word the world can produce, for training a tokenizer that covers it."""
    words = list(COLORS) + list(SHAPES) + list(CELLS.values()) + list(COUNTS.values())
    lines = ["how many shapes?", "caption en", "a", "and", "yes", "no"] + [
        f"what color is the {s}? what shape is {c}? where is the {c} shape? a {c} {s}"
        for c in COLORS for s in SHAPES] + [
        f"is the {c} shape left of the {d} shape? is the {c} shape above the {d} shape?" for c in COLORS for d in COLORS]
    return "\n".join(lines + words)
