"""The oracle: exact on renders, tolerant of VQ-like degradations, and right about hand-built edits."""

import io
import json
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from earl.errors import DataError
from earl.shapes.edits import random_scene
from earl.shapes.oracle import judge, parse_scene
from earl.shapes.render import render, render_array
from earl.shapes.scene import Scene, ShapeObject


def blur(img, rng):
    return img.filter(ImageFilter.GaussianBlur(1.0))  # PIL's radius is the Gaussian sigma


def jpeg(img, rng):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=75)
    return Image.open(io.BytesIO(buf.getvalue()))


def drift(img, rng):
    shift = np.array([rng.randint(-25, 25) for _ in range(3)])
    return Image.fromarray(np.clip(np.asarray(img).astype(int) + shift, 0, 255).astype(np.uint8))


def noise(img, rng):
    gen = np.random.default_rng(rng.randrange(2**32))
    return Image.fromarray(np.clip(np.asarray(img) + gen.normal(0, 8, (*img.size[::-1], 3)), 0, 255).astype(np.uint8))


def upscale(img, rng):
    """A model that outputs 256 px: nearest-upscaled, softened; the oracle resizes it back to 64."""
    return img.resize((256, 256), Image.NEAREST).filter(ImageFilter.GaussianBlur(2.0))


DEGRADATIONS = {"blur": blur, "jpeg": jpeg, "drift": drift, "noise": noise, "upscale": upscale}


@pytest.mark.parametrize("image_size,grid,n", [(64, 4, 500), (96, 4, 200), (128, 4, 200), (96, 3, 100), (128, 8, 100)])
def test_parse_is_exact_on_renders(image_size, grid, n):
    rng = random.Random(image_size * 10 + grid)
    for _ in range(n):
        scene = random_scene(rng, image_size=image_size, grid=grid, max_objects=min(6, grid * grid))
        parsed = parse_scene(render(scene), image_size=image_size, grid=grid)
        assert parsed.scene == scene
        assert parsed.stray_fraction == 0 and parsed.impurity_fraction == 0 and parsed.cleanliness == 1.0
        assert all(p.confidence == 1.0 for p in parsed.objects)


@pytest.mark.parametrize("name", list(DEGRADATIONS))
def test_parse_tolerates_degradations(name, record_property):
    """>= 95% required; measured rates at the time of writing: 100% for every degradation here."""
    rng = random.Random(0)
    exact = judged_ok = 0
    for _ in range(200):
        source = random_scene(rng)
        target = source.with_background("black" if source.background != "black" else "white")
        image = DEGRADATIONS[name](render(target), rng)
        exact += parse_scene(image, image_size=64).scene == target
        judged_ok += judge(source, target, image).success  # quality principles must pass too
    record_property(f"{name}_parse_rate", exact / 200)
    record_property(f"{name}_judge_rate", judged_ok / 200)
    assert exact / 200 >= 0.95, f"{name}: scene recovered on {exact}/200"
    assert judged_ok / 200 >= 0.95, f"{name}: judged successful on {judged_ok}/200"


# ---------------------------------------------------------------------------------------------
# Verdicts on hand-built edits: "make the red circle blue".

CIRCLE = ShapeObject("circle", "red", "small", 1, 2)
SQUARE = ShapeObject("square", "green", "large", 0, 3)
TRIANGLE = ShapeObject("triangle", "blue", "large", 3, 0)
SOURCE = Scene("white", (CIRCLE, SQUARE, TRIANGLE))
TARGET = Scene("white", (CIRCLE.replace(color="blue"), SQUARE, TRIANGLE))
INSTRUCTION = "Make the red circle blue."


def failed(j):
    return [(p.category, p.reason) for p in j.principles if not p.passed]


def test_right_edit_succeeds():
    j = judge(SOURCE, TARGET, render(TARGET), INSTRUCTION)
    assert j.success and (j.sc, j.pq, j.overall) == (10.0, 10.0, 10.0)
    kinds = [p.category for p in j.principles]
    # 1 required change; background + 2 untouched objects + "no extra objects"; 2 quality checks.
    assert kinds == ["instruction"] + ["preservation"] * 4 + ["quality"] * 2
    json.dumps(j.to_dict())


def test_wrong_colour_fails_the_instruction_principle():
    j = judge(SOURCE, TARGET, render(TARGET.with_objects([CIRCLE.replace(color="yellow"), SQUARE, TRIANGLE])), INSTRUCTION)
    assert failed(j) == [("instruction", "expected a small blue circle at row 2, column 3; found a small yellow circle")]
    assert not j.success and j.sc == 0.0 and j.pq == 10.0 and j.overall == 0.0


def test_no_change_fails():
    j = judge(SOURCE, TARGET, render(SOURCE), INSTRUCTION)
    assert failed(j) == [("instruction", "expected a small blue circle at row 2, column 3; found a small red circle")]
    assert not j.success and j.sc == 0.0


def test_collateral_change_fails_preservation():
    edited = TARGET.with_objects([CIRCLE.replace(color="blue"), SQUARE.replace(color="purple"), TRIANGLE])
    j = judge(SOURCE, TARGET, render(edited), INSTRUCTION)
    assert failed(j) == [("preservation", "expected a large green square at row 1, column 4; found a large purple square")]
    assert j.sc == pytest.approx(7.5)  # min(1/1, 3/4) * 10


def test_missing_and_extra_objects_fail_the_right_principles():
    missing = TARGET.with_objects([CIRCLE.replace(color="blue"), SQUARE])
    assert failed(judge(SOURCE, TARGET, render(missing))) == [
        ("preservation", "expected a large blue triangle at row 4, column 1; found nothing")]
    extra = TARGET.with_objects([*TARGET.objects, ShapeObject("square", "red", "small", 2, 2)])
    assert failed(judge(SOURCE, TARGET, render(extra))) == [
        ("preservation", "unexpected a small red square at row 3, column 3")]
    deleted = TARGET.with_objects([SQUARE, TRIANGLE])  # the edited object vanished instead
    assert failed(judge(SOURCE, TARGET, render(deleted))) == [
        ("instruction", "expected a small blue circle at row 2, column 3; found nothing")]


def test_stray_blob_fails_quality_only():
    image = render_array(TARGET)
    image[40:43, 40:43] = (245, 130, 190)  # a 3x3 pink blob in an empty cell: too small to be an object
    j = judge(SOURCE, TARGET, image, INSTRUCTION)
    assert [c for c, _ in failed(j)] == ["quality"] and "stray pixels" in failed(j)[0][1]
    assert j.sc == 10.0 and j.pq == 5.0 and j.overall == pytest.approx(50**0.5)
    image = render_array(TARGET)
    image[40, 40] = (245, 130, 190)  # a single-pixel speck is noise, not a blob
    assert judge(SOURCE, TARGET, image).success


def test_badly_drawn_shape_fails_cleanliness():
    image = render_array(TARGET)
    image[16:32, 32:48] = (250, 250, 250)
    image[18:30, 40:46] = (40, 80, 220)  # a blue 12x6 bar where a small blue circle should be
    j = judge(SOURCE, TARGET, image, INSTRUCTION)
    assert any(p.category == "quality" and "shape match" in p.reason for p in j.principles if not p.passed)


def test_background_and_move_edits():
    black = SOURCE.with_background("black")
    j = judge(SOURCE, black, render(SOURCE), "Make the background black.")
    assert failed(j) == [("instruction", "expected a black background; found white")]
    assert judge(SOURCE, black, render(black)).success
    moved = SOURCE.with_objects([CIRCLE.replace(row=2, col=2), SQUARE, TRIANGLE])
    j = judge(SOURCE, moved, render(SOURCE))
    assert [c for c, _ in failed(j)] == ["instruction", "instruction"]  # old cell not empty, new cell empty
    assert judge(SOURCE, moved, render(moved)).success


def test_image_inputs_are_converted():
    good = render(TARGET)
    assert judge(SOURCE, TARGET, good.convert("RGBA")).success
    assert judge(SOURCE, TARGET, np.asarray(good)).success
    buf = io.BytesIO()
    good.save(buf, format="PNG")
    assert judge(SOURCE, TARGET, buf.getvalue()).success
    assert judge(SOURCE, TARGET, good.resize((256, 256), Image.NEAREST)).success
    gray = judge(SOURCE, TARGET, good.convert("L"))  # handled (converted to RGB), but the colours are gone
    assert not gray.success


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="instruction is empty"):
        judge(SOURCE, TARGET, render(TARGET), "   ")
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match="broken.png"):
        judge(SOURCE, TARGET, corrupt)
    with pytest.raises(DataError, match="multiple of grid"):
        parse_scene(render(TARGET), image_size=30)


def test_parsed_scene_diagnostics_are_serialisable():
    d = parse_scene(render(TARGET)).to_dict()
    assert json.loads(json.dumps(d))["scene"] == TARGET.to_dict()
    assert {"stray_fraction", "impurity_fraction", "unknown_fraction", "cleanliness", "objects"} <= set(d)
