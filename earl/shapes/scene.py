"""Scene graphs: the plain-data description of a ShapesEdit image.

A scene is a background colour and 1-4 objects; each object has a shape, a colour, a size and a
cell on a `grid` x `grid` lattice (one object per cell, so objects never overlap and the oracle
can read each cell on its own). Everything is JSON-serialisable via `to_dict` / `from_dict`,
which validates names and positions and says what was wrong.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from earl.errors import DataError

# Object colours, chosen far apart in RGB so that blur and colour drift in VQ reconstructions still
# classify to the right name. Closest pairs: yellow/orange 71 (they differ almost only in green),
# pink/light gray 84, white/light gray 87 (two backgrounds); every other pair is over 100 apart.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 190),
    "orange": (245, 140, 30),
    "cyan": (40, 200, 210),
    "pink": (245, 130, 190),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (250, 250, 250),
    "light gray": (200, 200, 200),
    "dark gray": (70, 70, 70),
    "black": (10, 10, 10),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "large")
# Object extent as a fraction of the cell side: large objects nearly fill their cell, small ones half of it.
SIZE_FRACTION: dict[str, float] = {"small": 0.5, "large": 0.875}
DEFAULT_IMAGE_SIZE = 64
DEFAULT_GRID = 4
MAX_OBJECTS = 4


def _check_name(value: str, allowed, what: str) -> str:
    if value not in allowed:
        raise DataError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class ShapeObject:
    """One object: `row`, `col` index the grid cell (0,0 is top-left)."""

    shape: str
    color: str
    size: str
    row: int
    col: int

    def __post_init__(self):
        _check_name(self.shape, SHAPES, "shape")
        _check_name(self.color, PALETTE, "colour")
        _check_name(self.size, SIZES, "size")

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)

    def replace(self, **changes) -> ShapeObject:
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[ShapeObject, ...] = field(default_factory=tuple)
    image_size: int = DEFAULT_IMAGE_SIZE
    grid: int = DEFAULT_GRID

    def __post_init__(self):
        _check_name(self.background, BACKGROUNDS, "background colour")
        if self.image_size % self.grid or self.image_size // self.grid < 8:
            raise DataError(
                f"image_size {self.image_size} must be a multiple of grid {self.grid} with cells of at least 8 px"
            )
        cells = set()
        for o in self.objects:
            if not (0 <= o.row < self.grid and 0 <= o.col < self.grid):
                raise DataError(f"object {o.describe()} at cell ({o.row}, {o.col}) is outside the {self.grid}x{self.grid} grid")
            if o.cell in cells:
                raise DataError(f"two objects share cell ({o.row}, {o.col}); one object per cell")
            cells.add(o.cell)
        # Canonical order (row-major) so that equal scenes compare equal.
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: o.cell)))

    @property
    def cell_size(self) -> int:
        return self.image_size // self.grid

    def object_at(self, row: int, col: int) -> ShapeObject | None:
        for o in self.objects:
            if o.cell == (row, col):
                return o
        return None

    def free_cells(self) -> list[tuple[int, int]]:
        used = {o.cell for o in self.objects}
        return [(r, c) for r in range(self.grid) for c in range(self.grid) if (r, c) not in used]

    def with_objects(self, objects) -> Scene:
        return dataclasses.replace(self, objects=tuple(objects))

    def with_background(self, background: str) -> Scene:
        return dataclasses.replace(self, background=background)

    def to_dict(self) -> dict:
        return {
            "background": self.background,
            "image_size": self.image_size,
            "grid": self.grid,
            "objects": [dataclasses.asdict(o) for o in self.objects],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        if not isinstance(d, dict):
            raise DataError(f"scene: expected a mapping with background and objects, got {type(d).__name__}")
        try:
            objects = tuple(ShapeObject(**o) for o in d.get("objects", []))
            return cls(
                background=d["background"],
                objects=objects,
                image_size=int(d.get("image_size", DEFAULT_IMAGE_SIZE)),
                grid=int(d.get("grid", DEFAULT_GRID)),
            )
        except KeyError as e:
            raise DataError(f"scene: missing field {e.args[0]!r}") from None
        except TypeError as e:
            raise DataError(f"scene: malformed object ({e}); expected fields shape, color, size, row, col") from None
