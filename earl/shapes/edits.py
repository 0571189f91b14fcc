"""Edit programs, instructions and reasoning traces: what a ShapesEdit sample *means*.

A sample is a source scene, an `EditProgram` (a few small operations applied in order), the target
scene the program produces, one English instruction that says the same thing, and a short
templated reasoning trace. The program is the ground truth: the oracle judges an edited image
against `program.apply(source)`, never against the wording, so every generator here must only emit
instructions whose meaning on the given scene is unambiguous (each referring expression picks out
exactly one object) and that really change something (no recolouring to the same colour, no adding
to a full grid, no moving onto an occupied cell).

Reading order (the programs themselves, their operations and referring expressions are in
`earl.shapes.program`): the simple generators (one explicit operation) -> the complex ones
(compositional, relational, counting) -> reasoning traces -> `make_sample`. Everything is driven by one `random.Random`, so a sample is a pure
function of the rng state (the image size never consumes randomness).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from earl.errors import DataError
from earl.shapes.program import (
    RELATIONS,
    STEPS,
    Add,
    BackgroundChange,
    Cell,
    ColorAlter,
    EditProgram,
    Move,
    Op,
    Remove,
    Replace,
    Resize,
    attribute_ref,
    capitalise,
    cell_name,
    in_place,
    place_name,
    plural,
    refer,
)
from earl.shapes.scene import BACKGROUNDS, PALETTE, SHAPES, SIZES, Scene, ShapeObject

SPLITS: dict[str, tuple[str, ...]] = {
    "simple": ("color_alter", "add", "remove", "replace", "move", "resize", "background_change"),
    "complex": ("compositional", "relational", "counting"),
}
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


# ---------------------------------------------------------------------------------------------
# Simple edits: one explicit operation. A clause maker returns (op, clause) with the clause in
# lower case and without a full stop, so that compositional instructions can join several.

Clause = tuple[Op, str]
# `scenes`: the scenes every referring expression must be unambiguous in (source first, current last);
# `avoid`: cells already touched by earlier operations of the same program.
ClauseMaker = Callable[[random.Random, Sequence[Scene], set], Clause | None]


def _pick_object(rng: random.Random, scene: Scene, avoid: set) -> ShapeObject | None:
    objects = [o for o in scene.objects if o.cell not in avoid]
    return rng.choice(objects) if objects else None


def _other(rng: random.Random, values, current: str) -> str:
    return rng.choice([v for v in values if v != current])


def _color_clause(rng, scenes, avoid):
    obj = _pick_object(rng, scenes[-1], avoid)
    if obj is None:
        return None
    color, ref = _other(rng, PALETTE, obj.color), refer(obj, *scenes[::-1])
    phrasings = [f"change the colour of {ref} to {color}", f"make {ref} {color}", f"recolour {ref} {color}",
                 f"paint {ref} {color}"]
    return ColorAlter(obj.cell, color), rng.choice(phrasings)


def _random_object(rng: random.Random, cell: Cell) -> ShapeObject:
    return ShapeObject(rng.choice(SHAPES), rng.choice(list(PALETTE)), rng.choice(SIZES), *cell)


def _add_clause(rng, scenes, avoid):
    scene = scenes[-1]
    free = [c for c in scene.free_cells() if c not in avoid]
    if not free:
        return None
    obj = _random_object(rng, rng.choice(free))
    at = in_place(obj.cell, scene.grid)
    phrasings = [f"add a {obj.describe()} {at}", f"put a {obj.describe()} {at}", f"draw a {obj.describe()} {at}"]
    return Add(obj), rng.choice(phrasings)


def _remove_clause(rng, scenes, avoid):
    obj = _pick_object(rng, scenes[-1], avoid)
    if obj is None:
        return None
    ref = refer(obj, *scenes[::-1])
    return Remove(obj.cell), rng.choice([f"remove {ref}", f"delete {ref}", f"erase {ref}", f"take away {ref}"])


def _replace_clause(rng, scenes, avoid):
    obj = _pick_object(rng, scenes[-1], avoid)
    if obj is None:
        return None
    shape, ref = _other(rng, SHAPES, obj.shape), refer(obj, *scenes[::-1])
    phrasings = [f"replace {ref} with a {shape}", f"turn {ref} into a {shape}", f"change the shape of {ref} to a {shape}"]
    return Replace(obj.cell, shape), rng.choice(phrasings)


def _move_clause(rng, scenes, avoid):
    scene = scenes[-1]
    obj = _pick_object(rng, scene, avoid)
    free = [c for c in scene.free_cells() if c not in avoid]
    if obj is None or not free:
        return None
    ref = refer(obj, *scenes[::-1])
    steps = [(d, (obj.row + d[0], obj.col + d[1])) for d in STEPS]
    steps = [(d, c) for d, c in steps if c in free]
    relative = bool(steps) and rng.random() < 0.4
    if relative:
        d, to = rng.choice(steps)
        step = f"one cell {STEPS[d]}"
        phrasings = [f"move {ref} {step}", f"shift {ref} {step}", f"nudge {ref} {step}"]
    else:
        to = rng.choice(free)
        dest = place_name(to, scene.grid)
        phrasings = [f"move {ref} to {dest}", f"shift {ref} to {dest}", f"relocate {ref} to {dest}"]
    return Move(obj.cell, to, relative), rng.choice(phrasings)


def _resize_clause(rng, scenes, avoid):
    obj = _pick_object(rng, scenes[-1], avoid)
    if obj is None:
        return None
    size, ref = _other(rng, SIZES, obj.size), refer(obj, *scenes[::-1])
    bigger = size == "large"
    phrasings = [f"make {ref} {size}", f"make {ref} {'bigger' if bigger else 'smaller'}",
                 f"{'enlarge' if bigger else 'shrink'} {ref}", f"resize {ref} to {size}"]
    return Resize(obj.cell, size), rng.choice(phrasings)


def _background_clause(rng, scenes, avoid):
    if "background" in avoid:
        return None
    bg = _other(rng, BACKGROUNDS, scenes[-1].background)
    phrasings = [f"change the background to {bg}", f"make the background {bg}", f"set the background colour to {bg}",
                 f"paint the background {bg}"]
    return BackgroundChange(bg), rng.choice(phrasings)


CLAUSES: dict[str, ClauseMaker] = {
    "color_alter": _color_clause,
    "add": _add_clause,
    "remove": _remove_clause,
    "replace": _replace_clause,
    "move": _move_clause,
    "resize": _resize_clause,
    "background_change": _background_clause,
}


def _touched(op: Op) -> set:
    """Cells (or 'background') an operation changes; later operations in a program stay clear of them."""
    if isinstance(op, BackgroundChange):
        return {"background"}
    if isinstance(op, Add):
        return {op.obj.cell}
    if isinstance(op, Move):
        return {op.cell, op.to_cell}
    return {op.cell}


@dataclass
class Edit:
    """What a generator produces: the operations, the instruction, and resolution sentences
    (relational/counting reasoning) that the trace puts before the operation steps."""

    ops: list
    instruction: str
    resolution: list[str] = dataclasses.field(default_factory=list)


def _simple(category: str) -> Callable[[random.Random, Scene], Edit | None]:
    def generate(rng: random.Random, scene: Scene) -> Edit | None:
        made = CLAUSES[category](rng, [scene], set())
        return None if made is None else Edit([made[0]], capitalise(made[1]) + ".")

    return generate


# ---------------------------------------------------------------------------------------------
# Complex edits.


def compositional(rng: random.Random, scene: Scene) -> Edit | None:
    """2-3 simple operations on disjoint cells in one sentence."""
    scenes, avoid, ops, clauses = [scene], set(), [], []
    for kind in rng.sample(list(CLAUSES), rng.choice((2, 3))):
        made = CLAUSES[kind](rng, scenes, avoid)
        if made is None:
            return None
        op, clause = made
        ops.append(op)
        clauses.append(clause)
        avoid |= _touched(op)
        scenes.append(op.apply(scenes[-1]))
    a, b, *rest = clauses
    if not rest:
        joined = rng.choice([f"{capitalise(a)} and {b}", f"{capitalise(a)}, then {b}", f"First {a}, then {b}"])
    else:
        c = rest[0]
        joined = rng.choice([f"{capitalise(a)}, {b} and {c}", f"{capitalise(a)}, then {b}, then {c}",
                             f"First {a}, then {b}, and finally {c}"])
    return Edit(ops, joined + ".")


def _located(obj: ShapeObject) -> str:
    return f"the {obj.describe()} at {cell_name(obj.cell)}"


def _in_direction(scene: Scene, anchor: ShapeObject, step: Cell) -> list[ShapeObject]:
    """Objects strictly left of / right of / above / below `anchor` in its row or column."""
    dr, dc = step
    if dr == 0:
        return [o for o in scene.objects if o.row == anchor.row and (o.col - anchor.col) * dc > 0]
    return [o for o in scene.objects if o.col == anchor.col and (o.row - anchor.row) * dr > 0]


def _relational_target(rng: random.Random, scene: Scene) -> tuple[ShapeObject, str, str] | None:
    """(object, phrase, resolution) for 'the shape to the left of the square' with a unique answer."""
    options = []
    for anchor in scene.objects:
        anchor_ref = attribute_ref(anchor, [scene])
        if anchor_ref is None:
            continue
        for step, rel in RELATIONS.items():
            found = _in_direction(scene, anchor, step)
            if len(found) == 1:
                options.append((found[0], f"the shape {rel} {anchor_ref}"))
    if not options:
        return None
    obj, phrase = rng.choice(options)
    return obj, phrase, f"{capitalise(phrase)} is {_located(obj)}."


def _rel_act(rng: random.Random, scene: Scene) -> Edit | None:
    """'Remove the shape below the blue circle', 'make the shape left of the square match the triangle's colour'."""
    found = _relational_target(rng, scene)
    if found is None:
        return None
    obj, t, resolution = found
    action = rng.choice(["recolour", "remove", "resize", "replace", "copy"])
    if action == "recolour":
        color = _other(rng, PALETTE, obj.color)
        return Edit([ColorAlter(obj.cell, color)], rng.choice([f"Make {t} {color}.", f"Recolour {t} {color}."]), [resolution])
    if action == "remove":
        return Edit([Remove(obj.cell)], rng.choice([f"Remove {t}.", f"Delete {t}."]), [resolution])
    if action == "resize":
        size = _other(rng, SIZES, obj.size)
        return Edit([Resize(obj.cell, size)], f"Make {t} {size}.", [resolution])
    if action == "replace":
        shape = _other(rng, SHAPES, obj.shape)
        return Edit([Replace(obj.cell, shape)], rng.choice([f"Turn {t} into a {shape}.", f"Replace {t} with a {shape}."]),
                    [resolution])
    donors = [(o, attribute_ref(o, [scene])) for o in scene.objects if o.color != obj.color]
    donors = [(o, ref) for o, ref in donors if ref is not None]
    if not donors:
        return None
    donor, ref = rng.choice(donors)
    text = rng.choice([f"Make {t} the same colour as {ref}.", f"Make {t} match the colour of {ref}."])
    why = f"{capitalise(ref)} is {donor.color}, so it becomes {donor.color}."
    return Edit([ColorAlter(obj.cell, donor.color)], text, [resolution, why])


def _rel_copy(rng: random.Random, scene: Scene) -> Edit | None:
    """'Make the circle the same colour as the square' (also size and shape)."""
    refs = [(o, attribute_ref(o, [scene])) for o in scene.objects]
    refs = [(o, r) for o, r in refs if r is not None]
    attr = rng.choice(["color", "size", "shape"])
    pairs = [(a, b) for a in refs for b in refs if getattr(a[0], attr) != getattr(b[0], attr)]
    if not pairs:
        return None
    (obj, t), (donor, d) = rng.choice(pairs)
    value = getattr(donor, attr)
    if attr == "color":
        op, text = ColorAlter(obj.cell, value), rng.choice([f"Make {t} the same colour as {d}.", f"Give {t} the colour of {d}."])
    elif attr == "size":
        op, text = Resize(obj.cell, value), rng.choice([f"Make {t} the same size as {d}.", f"Resize {t} to match {d}."])
    else:
        op, text = Replace(obj.cell, value), rng.choice([f"Make {t} the same shape as {d}.", f"Give {t} the shape of {d}."])
    if attr == "shape":
        why = f"{capitalise(t)} at {cell_name(obj.cell)} becomes a {value}, like {d}."
    else:
        why = f"{capitalise(d)} is {value}, so {t} at {cell_name(obj.cell)} becomes {value}."
    return Edit([op], text, [why])


def _rel_place(rng: random.Random, scene: Scene) -> Edit | None:
    """'Add a small red square directly above the blue circle' / 'move the circle directly below the square'."""
    options = []
    for anchor in scene.objects:
        anchor_ref = attribute_ref(anchor, [scene])
        for step, rel in RELATIONS.items():
            to = (anchor.row + step[0], anchor.col + step[1])
            if anchor_ref and to in scene.free_cells():
                options.append((anchor, anchor_ref, rel, to))
    if not options:
        return None
    anchor, a, rel, to = rng.choice(options)
    why = f"{capitalise(a)} is at {cell_name(anchor.cell)}, so the place {rel} it is {cell_name(to)}."
    movers = [(o, attribute_ref(o, [scene])) for o in scene.objects if o is not anchor]
    movers = [(o, r) for o, r in movers if r is not None]
    if movers and rng.random() < 0.5:
        obj, t = rng.choice(movers)
        return Edit([Move(obj.cell, to)], rng.choice([f"Move {t} directly {rel} {a}.", f"Put {t} directly {rel} {a}."]), [why])
    obj = _random_object(rng, to)
    return Edit([Add(obj)], rng.choice([f"Add a {obj.describe()} directly {rel} {a}.", f"Draw a {obj.describe()} directly {rel} {a}."]),
                [why])


def relational(rng: random.Random, scene: Scene) -> Edit | None:
    """Implicit referents that need a resolution step (spatial relations, copying attributes)."""
    for generate in rng.sample([_rel_act, _rel_copy, _rel_place], 3):
        edit = generate(rng, scene)
        if edit is not None:
            return edit
    return None


def _groups(scene: Scene) -> list[tuple[list[ShapeObject], str, str]]:
    """(members, plural noun, singular noun) for every colour/shape/size group with 2-3 members."""
    out = []
    for c in PALETTE:
        out.append(([o for o in scene.objects if o.color == c], f"{c} shapes", f"{c} shape"))
    for s in SHAPES:
        out.append(([o for o in scene.objects if o.shape == s], f"{s}s", s))
    for z in SIZES:
        out.append(([o for o in scene.objects if o.size == z], f"{z} shapes", f"{z} shape"))
    return [g for g in out if 2 <= len(g[0]) <= 3]  # at most 3 keeps the trace short


def _count_all(rng: random.Random, scene: Scene) -> Edit | None:
    """'Remove all the red shapes', 'make every circle green'."""
    groups = _groups(scene)
    if not groups:
        return None
    members, plural, singular = rng.choice(groups)
    why = f"There are {NUMBER_WORDS[len(members)]} {plural}."
    if rng.random() < 0.5:
        text = rng.choice([f"Remove all the {plural}.", f"Delete every {singular}."])
        return Edit([Remove(o.cell) for o in members], text, [why])
    color = rng.choice(list(PALETTE))
    changing = [o for o in members if o.color != color]
    if not changing:
        return None
    text = rng.choice([f"Make all the {plural} {color}.", f"Make every {singular} {color}.", f"Recolour every {singular} {color}."])
    if len(changing) < len(members):
        k = len(members) - len(changing)
        why += f" {capitalise(NUMBER_WORDS[k])} {'is' if k == 1 else 'are'} already {color}."
    return Edit([ColorAlter(o.cell, color) for o in changing], text, [why])


def _count_superlative(rng: random.Random, scene: Scene) -> Edit | None:
    """'Remove the largest shape' when exactly one object is large (or small)."""
    options = []
    for size, word in (("large", "largest"), ("small", "smallest")):
        same = [o for o in scene.objects if o.size == size]
        if len(same) == 1 and len(scene.objects) >= 2:
            options.append((same[0], word))
    if not options:
        return None
    obj, word = rng.choice(options)
    t, why = f"the {word} shape", f"The {word} shape is {_located(obj)}."
    if rng.random() < 0.5:
        return Edit([Remove(obj.cell)], rng.choice([f"Remove {t}.", f"Delete {t}."]), [why])
    color = _other(rng, PALETTE, obj.color)
    return Edit([ColorAlter(obj.cell, color)], f"Make {t} {color}.", [why])


def _count_add(rng: random.Random, scene: Scene) -> Edit | None:
    """'Add a large red square in row 1, column 2 so that there are two squares'."""
    free = scene.free_cells()
    if not free or not scene.objects:
        return None
    obj = _random_object(rng, rng.choice(free))
    if rng.random() < 0.5:
        n, noun = sum(o.shape == obj.shape for o in scene.objects), f"{obj.shape}s"
    else:
        n, noun = sum(o.color == obj.color for o in scene.objects), f"{obj.color} shapes"
    if n == 0:
        return None
    text = f"Add a {obj.describe()} {in_place(obj.cell, scene.grid)} so that there are {NUMBER_WORDS[n + 1]} {noun}."
    why = f"There {'is' if n == 1 else 'are'} {NUMBER_WORDS[n]} {noun[:-1] if n == 1 else noun} now; adding one makes {NUMBER_WORDS[n + 1]}."
    return Edit([Add(obj)], text, [why])


def _count_colours(rng: random.Random, scene: Scene) -> Edit | None:
    """'Remove the shape whose colour appears only once' / 'remove the shapes whose colour appears twice'."""
    by_color: dict[str, list[ShapeObject]] = {}
    for o in scene.objects:
        by_color.setdefault(o.color, []).append(o)
    once = [v[0] for v in by_color.values() if len(v) == 1]
    twice = [v for v in by_color.values() if len(v) == 2]
    options = []
    if len(once) == 1 and len(scene.objects) >= 3:
        obj = once[0]
        why = f"Only one shape is {obj.color}: {_located(obj)}."
        options.append(Edit([Remove(obj.cell)], rng.choice(["Remove the shape whose colour appears only once.",
                                                            "Remove the only shape with a unique colour."]), [why]))
    if len(twice) == 1 and all(len(v) == 1 for v in by_color.values() if v is not twice[0]):
        a, b = twice[0]
        why = f"The {a.color} shapes are at {cell_name(a.cell)} and {cell_name(b.cell)}."
        options.append(Edit([Remove(a.cell), Remove(b.cell)], rng.choice(["Remove the shapes whose colour appears twice.",
                                                                         "Remove the two shapes that share a colour."]), [why]))
    return rng.choice(options) if options else None


def counting(rng: random.Random, scene: Scene) -> Edit | None:
    """Quantifiers, superlatives and counts: 'remove all the red shapes', 'remove the largest shape'."""
    for generate in rng.sample([_count_all, _count_superlative, _count_add, _count_colours], 4):
        edit = generate(rng, scene)
        if edit is not None:
            return edit
    return None


GENERATORS: dict[str, Callable[[random.Random, Scene], Edit | None]] = {
    **{category: _simple(category) for category in SPLITS["simple"]},
    "compositional": compositional,
    "relational": relational,
    "counting": counting,
}


# ---------------------------------------------------------------------------------------------
# Reasoning traces: templated and regular, so that a small model can learn to write them.

_OP_NAMES = {"color_alter": "recolour", "add": "add", "remove": "remove", "replace": "replace", "move": "move",
             "resize": "resize", "background_change": "background"}


def _step(op: Op, scene: Scene) -> tuple[str, str]:
    """(target, result) of one operation, described on the scene it applies to."""
    if isinstance(op, BackgroundChange):
        return f"the {scene.background} background", f"it becomes {op.new_background}"
    if isinstance(op, Add):
        return f"the empty cell at {cell_name(op.obj.cell)}", f"a {op.obj.describe()} appears there"
    obj = scene.object_at(*op.cell)
    target = _located(obj)
    if isinstance(op, Remove):
        return target, "the cell becomes empty"
    if isinstance(op, Move):
        return target, f"it moves to {cell_name(op.to_cell)}"
    return target, f"it becomes a {op.apply(scene).object_at(*op.cell).describe()}"


def _unchanged(source: Scene, ops: Sequence[Op]) -> str:
    touched = set().union(*(_touched(op) for op in ops))
    kept = sum(o.cell not in touched for o in source.objects)
    if "background" in touched:
        if kept == len(source.objects) and touched == {"background"}:
            return {0: "", 1: "Unchanged: the shape.", 2: "Unchanged: both shapes."}.get(kept, f"Unchanged: all {kept} shapes.")
        return f"Unchanged: {plural(kept, 'other shape')}." if kept else "Unchanged: nothing else."
    bg = f"the {source.background} background"
    return f"Unchanged: {plural(kept, 'other shape')} and {bg}." if kept else f"Unchanged: {bg}."


def reasoning_trace(source: Scene, ops: Sequence[Op], resolution: Sequence[str] = ()) -> str:
    """'Operation: recolour. Target: the small red circle at row 2, column 3. Result: it becomes a
    small blue circle. Unchanged: 2 other shapes and the white background.' (resolution sentences first)."""
    parts = list(resolution)
    scene = source
    steps = []
    for op in ops:
        steps.append((_OP_NAMES[op.kind], *_step(op, scene)))
        scene = op.apply(scene)
    if len(steps) == 1:
        name, target, result = steps[0]
        parts.append(f"Operation: {name}. Target: {target}. Result: {result}.")
    else:
        parts.append("Operations: " + " ".join(f"{i}) {n}: {t}; {r}." for i, (n, t, r) in enumerate(steps, 1)))
    parts.append(_unchanged(source, ops))
    return " ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------
# Scenes and samples.


def random_scene(rng: random.Random, image_size: int = 64, grid: int = 4, min_objects: int = 1, max_objects: int = 4) -> Scene:
    """A random background and `min_objects`-`max_objects` random objects in distinct cells."""
    background = rng.choice(list(BACKGROUNDS))
    n = rng.randint(min_objects, max_objects)
    cells = rng.sample([(r, c) for r in range(grid) for c in range(grid)], n)
    return Scene(background, tuple(_random_object(rng, cell) for cell in cells), image_size=image_size, grid=grid)


@dataclass(frozen=True)
class Sample:
    source_scene: Scene
    program: EditProgram
    target_scene: Scene
    instruction: str
    category: str
    reasoning: str
    split: str
    id: str = ""


def make_sample(rng: random.Random, split: str, image_size: int = 64, grid: int = 4, max_tries: int = 1000) -> Sample:
    """Pick a category uniformly from the split, then draw scenes until its generator can make an
    unambiguous, non-trivial edit (retrying keeps the category mix uniform)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    category = rng.choice(SPLITS[split])
    for _ in range(max_tries):
        source = random_scene(rng, image_size=image_size, grid=grid)
        edit = GENERATORS[category](rng, source)
        if edit is None:
            continue
        program = EditProgram(tuple(edit.ops))
        target = program.apply(source)
        assert target != source, f"{category} produced a no-op edit: {edit.instruction}"
        reasoning = reasoning_trace(source, edit.ops, edit.resolution)
        return Sample(source, program, target, edit.instruction, category, reasoning, split)
    raise RuntimeError(f"generator {category!r} found no valid edit in {max_tries} scenes (grid {grid})")
