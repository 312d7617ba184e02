"""The shapes vocabulary, captions, and the fixed held-out split.

Two prompt kinds (GenEval's counting/colour/position and two-object/colour-attribute kinds):

- single: one colour, one shape, a count of 1-3, one position ("two red circles on the left");
- two: two objects of different colours and shapes ("a red circle and a blue square").

Held-out combinations are fixed by an index rule, not by a seed, so every run and every machine
holds out the same ones: a single-kind combination is held out when (colour + shape + count - 1 +
position) % 5 == 0 over the vocabulary indices, a two-object pair when (c1 + s1 + c2 + s2) % 5 == 0.
For single prompts this holds out exactly one colour per (shape, count, position), so every
pair of attribute values is still seen in training, only never the whole combination.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 190),
}
SHAPES = ("circle", "square", "triangle")
COUNTS = (1, 2, 3)
POSITIONS = ("left", "right", "top", "bottom")
BACKGROUND = (240, 240, 240)

_COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
_POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
_MODULUS = 5  # one combination in five is held out


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    count: int = 1


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for: one object group with a position, or two single objects."""

    objects: tuple[ObjectSpec, ...]
    position: str | None = None

    def __post_init__(self):
        _validate(self)

    @property
    def kind(self) -> str:
        return "single" if len(self.objects) == 1 else "two"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "position": self.position,
                "objects": [{"colour": o.colour, "shape": o.shape, "count": o.count} for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> "PromptSpec":
        try:
            objects = tuple(ObjectSpec(o["colour"], o["shape"], int(o.get("count", 1))) for o in data["objects"])
            return cls(objects=objects, position=data.get("position"))
        except (KeyError, TypeError) as err:
            raise ValueError(f"not a shapes prompt spec: {data!r} ({err})") from err


def _validate(spec: PromptSpec) -> None:
    for o in spec.objects:
        if o.colour not in COLOURS or o.shape not in SHAPES or o.count not in COUNTS:
            raise ValueError(f"unknown shapes attribute in {o} (colours {list(COLOURS)}, shapes {list(SHAPES)}, "
                             f"counts {list(COUNTS)})")
    if len(spec.objects) == 1:
        if spec.position not in POSITIONS:
            raise ValueError(f"a single-object prompt needs a position in {POSITIONS}, got {spec.position!r}")
    elif len(spec.objects) == 2:
        a, b = spec.objects
        if spec.position is not None or a.count != 1 or b.count != 1 or a.colour == b.colour or a.shape == b.shape:
            raise ValueError(f"a two-object prompt names two single objects of different colours and shapes: {spec}")
    else:
        raise ValueError(f"a shapes prompt has one or two object groups, got {len(spec.objects)}")


def caption(spec: PromptSpec) -> str:
    if spec.kind == "single":
        o = spec.objects[0]
        noun = o.shape + ("s" if o.count > 1 else "")
        return f"{_COUNT_WORDS[o.count]} {o.colour} {noun} {_POSITION_PHRASES[spec.position]}"
    return " and ".join(f"a {o.colour} {o.shape}" for o in spec.objects)


def _index(o: ObjectSpec) -> int:
    return list(COLOURS).index(o.colour) + SHAPES.index(o.shape)


def heldout(spec: PromptSpec) -> bool:
    """True for the fixed held-out combinations (never in training data)."""
    if spec.kind == "single":
        o = spec.objects[0]
        return (_index(o) + o.count - 1 + POSITIONS.index(spec.position)) % _MODULUS == 0
    return sum(_index(o) for o in spec.objects) % _MODULUS == 0


def all_specs() -> list[PromptSpec]:
    """Every combination once, two-object pairs in canonical (vocabulary) order."""
    singles = [PromptSpec((ObjectSpec(c, s, n),), p) for c, s, n, p in itertools.product(COLOURS, SHAPES, COUNTS, POSITIONS)]
    objects = [ObjectSpec(c, s) for c, s in itertools.product(COLOURS, SHAPES)]
    pairs = [PromptSpec((a, b)) for a, b in itertools.combinations(objects, 2)
             if a.colour != b.colour and a.shape != b.shape]
    return singles + pairs


def spec_of(text: str) -> PromptSpec:
    """The spec behind a caption this vocabulary writes (either object order for two-object ones)."""
    if not _BY_CAPTION:
        for spec in all_specs():
            _BY_CAPTION[caption(spec)] = spec
            if spec.kind == "two":
                _BY_CAPTION[caption(PromptSpec(spec.objects[::-1]))] = PromptSpec(spec.objects[::-1])
    try:
        return _BY_CAPTION[text]
    except KeyError:
        raise ValueError(f"not a shapes caption: {text!r}") from None


_BY_CAPTION: dict[str, PromptSpec] = {}


def train_specs() -> list[PromptSpec]:
    return [s for s in all_specs() if not heldout(s)]


def eval_prompts() -> list[PromptSpec]:
    """The fixed held-out benchmark prompts (single-kind first, then two-object)."""
    return [s for s in all_specs() if heldout(s)]
