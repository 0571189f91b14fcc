"""The oracle verifier on a right and a wrong edit, its failure modes, and the verifier registry."""

import json
import random

import pytest

from earl.errors import ConfigError
from earl.shapes.edits import make_sample
from earl.shapes.render import render
from earl.verify import EditRequest, RewardResult, Verifier, build_verifier
from earl.verify.oracle import OracleVerifier


@pytest.fixture(scope="module")
def sample():
    return make_sample(random.Random(3), "simple")


def _request(sample, edited, as_json=True):
    meta = {"id": "s0", "source_scene": sample.source_scene.to_dict(), "target_scene": sample.target_scene.to_dict()}
    if as_json:
        meta = {k: json.dumps(v) if k != "id" else v for k, v in meta.items()}
    return EditRequest(render(sample.source_scene), sample.instruction, edited, meta)


def test_right_and_wrong_edit(sample):
    v = OracleVerifier()
    right, wrong = v.score([_request(sample, render(sample.target_scene)),
                            _request(sample, render(sample.source_scene), as_json=False)])
    assert isinstance(v, Verifier)
    assert not right.failed and right.reward == pytest.approx(1.0)
    assert right.scores == {"sc": 10.0, "pq": 10.0, "overall": 10.0, "success": 1.0}
    assert all(p["passed"] for p in right.principles)
    assert set(right.principles[0]) == {"question", "category", "passed", "reason"}
    # An unchanged image fails every instruction principle: SC = 0, so overall = 0.
    assert not wrong.failed and wrong.reward == 0.0 and wrong.scores["success"] == 0.0
    assert any(not p["passed"] for p in wrong.principles)


def test_reward_options(sample):
    req = _request(sample, render(sample.source_scene))
    assert OracleVerifier(reward="success").score([req])[0].reward == 0.0
    assert OracleVerifier(reward="sc").score([req])[0].reward == 0.0
    assert build_verifier("oracle", reward="success").score([_request(sample, render(sample.target_scene))])[0].reward == 1.0


def test_missing_or_bad_scenes_fail_cleanly(sample):
    no_meta = EditRequest(render(sample.source_scene), sample.instruction, render(sample.target_scene))
    bad_json = _request(sample, render(sample.target_scene))
    bad_json.meta["target_scene"] = "{not json"
    empty = _request(sample, render(sample.target_scene))
    empty.instruction = "  "
    results = OracleVerifier().score([no_meta, bad_json, empty])
    assert all(isinstance(r, RewardResult) and r.failed and r.reward is None for r in results)
    assert "source_scene" in results[0].error
    assert "target_scene" in results[1].error and "JSON" in results[1].error
    assert "instruction" in results[2].error


def test_registry_errors():
    with pytest.raises(ConfigError, match="unknown verifier 'nope'.*oracle, viescore"):
        build_verifier("nope")
    with pytest.raises(ConfigError, match="unknown option 'rewrad'.*valid options: reward"):
        build_verifier("oracle", rewrad="overall")
    with pytest.raises(ConfigError, match="unknown reward 'best'"):
        build_verifier("oracle", reward="best")
    with pytest.raises(ConfigError, match="unknown option 'url'.*base_url"):
        build_verifier("viescore", url="http://x")
    with pytest.raises(ConfigError, match="unknown judge backend 'grpc'"):
        build_verifier("viescore", backend="grpc")
    with pytest.raises(ConfigError, match="model_path"):
        build_verifier("viescore", backend="local")
