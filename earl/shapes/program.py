"""ShapesEdit's edit programs: positions in words, the operations, programs, and referring expressions.

An `EditProgram` is a few small operations (`Op`: frozen dataclasses, each a pure function
Scene -> Scene) applied in order; it is a sample's ground truth, which the oracle judges an edited image
against. The referring expressions here (`refer`, `attribute_ref`) pick out exactly one object, so an
instruction built from them means one thing on its scene. The generators that draw programs and write
their instructions are in `earl.shapes.edits`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from earl.errors import DataError
from earl.shapes.scene import BACKGROUNDS, PALETTE, SHAPES, SIZES, Scene, ShapeObject

Cell = tuple[int, int]

# ---------------------------------------------------------------------------------------------
# Positions in words. Rows and columns are 1-based in text; corners get their own names.


def cell_name(cell: Cell) -> str:
    """'row 2, column 3': the only position form used in reasoning traces (regular on purpose)."""
    return f"row {cell[0] + 1}, column {cell[1] + 1}"


def place_name(cell: Cell, grid: int) -> str:
    """'the top-left corner' for corners, else 'row 2, column 3' (for "move X to ...")."""
    r, c = cell
    last = grid - 1
    if r in (0, last) and c in (0, last):
        return f"the {'top' if r == 0 else 'bottom'}-{'left' if c == 0 else 'right'} corner"
    return cell_name(cell)


def in_place(cell: Cell, grid: int) -> str:
    """'in the top-left corner' / 'in row 2, column 3'."""
    return f"in {place_name(cell, grid)}"


# (row step, column step) -> phrase, for relative moves and relations.
STEPS: dict[Cell, str] = {(0, -1): "to the left", (0, 1): "to the right", (-1, 0): "up", (1, 0): "down"}
RELATIONS: dict[Cell, str] = {(0, -1): "to the left of", (0, 1): "to the right of", (-1, 0): "above", (1, 0): "below"}


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------------------------------------
# Operations: small frozen dataclasses, each a pure function Scene -> Scene.


def _object_at(scene: Scene, cell: Cell, op) -> ShapeObject:
    obj = scene.object_at(*cell)
    if obj is None:
        raise DataError(f"{op.kind}: no object at {cell_name(cell)} (cell {tuple(cell)})")
    return obj


def _swap(scene: Scene, old: ShapeObject, new: ShapeObject | None) -> Scene:
    objects = [o for o in scene.objects if o is not old]
    return scene.with_objects(objects + ([new] if new is not None else []))


@dataclass(frozen=True)
class ColorAlter:
    cell: Cell
    new_color: str
    kind: ClassVar[str] = "color_alter"

    def apply(self, scene: Scene) -> Scene:
        obj = _object_at(scene, self.cell, self)
        return _swap(scene, obj, obj.replace(color=self.new_color))


@dataclass(frozen=True)
class Add:
    obj: ShapeObject
    kind: ClassVar[str] = "add"

    def apply(self, scene: Scene) -> Scene:
        if scene.object_at(*self.obj.cell) is not None:
            raise DataError(f"add: {cell_name(self.obj.cell)} is already occupied")
        return scene.with_objects(scene.objects + (self.obj,))


@dataclass(frozen=True)
class Remove:
    cell: Cell
    kind: ClassVar[str] = "remove"

    def apply(self, scene: Scene) -> Scene:
        return _swap(scene, _object_at(scene, self.cell, self), None)


@dataclass(frozen=True)
class Replace:
    """Change the shape; colour and size stay."""

    cell: Cell
    new_shape: str
    kind: ClassVar[str] = "replace"

    def apply(self, scene: Scene) -> Scene:
        obj = _object_at(scene, self.cell, self)
        return _swap(scene, obj, obj.replace(shape=self.new_shape))


@dataclass(frozen=True)
class Move:
    cell: Cell
    to_cell: Cell
    relative: bool = False  # asked as a step ("one cell up") rather than as a place: a plan keeps it so
    kind: ClassVar[str] = "move"

    def apply(self, scene: Scene) -> Scene:
        obj = _object_at(scene, self.cell, self)
        if tuple(self.to_cell) != tuple(self.cell) and scene.object_at(*self.to_cell) is not None:
            raise DataError(f"move: {cell_name(self.to_cell)} is already occupied")
        return _swap(scene, obj, obj.replace(row=self.to_cell[0], col=self.to_cell[1]))


@dataclass(frozen=True)
class Resize:
    cell: Cell
    new_size: str
    kind: ClassVar[str] = "resize"

    def apply(self, scene: Scene) -> Scene:
        obj = _object_at(scene, self.cell, self)
        return _swap(scene, obj, obj.replace(size=self.new_size))


@dataclass(frozen=True)
class BackgroundChange:
    new_background: str
    kind: ClassVar[str] = "background_change"

    def apply(self, scene: Scene) -> Scene:
        return scene.with_background(self.new_background)


Op = ColorAlter | Add | Remove | Replace | Move | Resize | BackgroundChange
OPS: dict[str, type] = {cls.kind: cls for cls in (ColorAlter, Add, Remove, Replace, Move, Resize, BackgroundChange)}


def op_to_dict(op: Op) -> dict:
    d: dict = {"op": op.kind}
    for f in dataclasses.fields(op):
        value = getattr(op, f.name)
        d[f.name] = dataclasses.asdict(value) if isinstance(value, ShapeObject) else (
            list(value) if isinstance(value, tuple) else value
        )
    return d


def op_from_dict(d: dict) -> Op:
    if not isinstance(d, dict) or d.get("op") not in OPS:
        raise DataError(f"edit op: expected a mapping with 'op' in {', '.join(OPS)}, got {d!r}")
    cls = OPS[d["op"]]
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d and f.default is not dataclasses.MISSING:
            continue  # a field added later, absent from older datasets
        if f.name not in d:
            raise DataError(f"edit op {d['op']}: missing field {f.name!r}")
        value = d[f.name]
        try:
            if f.name in ("cell", "to_cell"):
                value = (int(value[0]), int(value[1]))
            elif f.name == "obj":
                value = ShapeObject(**value)
        except (TypeError, ValueError, IndexError, KeyError) as e:
            raise DataError(f"edit op {d['op']}: malformed field {f.name!r} ({e})") from None
        kwargs[f.name] = value
    op = cls(**kwargs)
    for name, allowed in (("new_color", PALETTE), ("new_shape", SHAPES), ("new_size", SIZES), ("new_background", BACKGROUNDS)):
        if name in kwargs and kwargs[name] not in allowed:
            raise DataError(f"edit op {d['op']}: unknown {name} {kwargs[name]!r}; expected one of {', '.join(allowed)}")
    return op


@dataclass(frozen=True)
class EditProgram:
    """Operations applied in order; each sees the scene left by the previous one."""

    ops: tuple[Op, ...]

    def apply(self, scene: Scene) -> Scene:
        for op in self.ops:
            scene = op.apply(scene)
        return scene

    def __len__(self) -> int:
        return len(self.ops)

    def to_dict(self) -> dict:
        return {"ops": [op_to_dict(op) for op in self.ops]}

    @classmethod
    def from_dict(cls, d: dict) -> EditProgram:
        if not isinstance(d, dict) or not isinstance(d.get("ops"), list):
            raise DataError(f"edit program: expected a mapping with a list 'ops', got {type(d).__name__}")
        return cls(tuple(op_from_dict(o) for o in d["ops"]))


# ---------------------------------------------------------------------------------------------
# Referring expressions: the shortest description that picks out exactly one object.

# Attribute combinations tried in order (shortest first): "the circle", "the red circle",
# "the small circle", "the small red circle".
_REF_FIELDS: tuple[tuple[str, ...], ...] = (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"))


def _matches(obj: ShapeObject, fields: Sequence[str], like: ShapeObject) -> bool:
    return all(getattr(obj, f) == getattr(like, f) for f in fields)


def attribute_ref(obj: ShapeObject, scenes: Sequence[Scene]) -> str | None:
    """Shortest attribute description naming `obj` uniquely in every scene of `scenes`, or None.

    Several scenes because a compositional instruction is read against the source while each
    operation applies to an intermediate scene: a description must be unambiguous in both.
    """
    for fields in _REF_FIELDS:
        if all(
            [o.cell for o in s.objects if _matches(o, fields, obj)] == [obj.cell] for s in scenes
        ):
            return "the " + " ".join(getattr(obj, f) for f in fields)
    return None


def refer(obj: ShapeObject, scene: Scene, *also: Scene) -> str:
    """Unique description of `obj` in `scene` (and in `also`): attributes if they suffice, else position."""
    ref = attribute_ref(obj, (scene, *also))
    return ref if ref is not None else f"the shape {in_place(obj.cell, scene.grid)}"
