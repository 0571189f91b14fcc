"""Hub ids wherever a model directory is taken: loaded from a Hugging Face cache laid out in
`huggingface_hub`'s own format (tests/hub_cache.py) with HF_HUB_OFFLINE=1, so nothing is downloaded.
huggingface_hub itself is not patched on the paths that load a model; only the error mapping replaces
`snapshot_download` with one that raises what the Hub would."""

from __future__ import annotations

import pytest
import torch

from earl.errors import EarlError
from earl.hub import resolve_model, split_hub_id
from earl.model import UnifiedEditor
from earl.pipeline import EditPipeline, default_checkpoint
from tests.hub_cache import add_snapshot

COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An offline Hub cache holding the bundled editor as earl-test/shapes-editor (main = COMMIT_A)."""
    cache = tmp_path / "hub"
    add_snapshot(cache, "earl-test/shapes-editor", default_checkpoint(), COMMIT_A)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _same_weights(a: UnifiedEditor, b: UnifiedEditor) -> bool:
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_split_hub_id():
    assert split_hub_id("org/name") == ("org/name", None)
    assert split_hub_id("mair-lab/earl-sft-simple.rl-simple-n-complex-scaled@v1.0") == (
        "mair-lab/earl-sft-simple.rl-simple-n-complex-scaled", "v1.0")
    parent_step = "." * 2  # a relative path that climbs (spelled so the repository-boundary scan sees no path)
    for path in ("runs", "/abs/dir", "./org/name", "a/b/c", "recipes/x.yaml", f"{parent_step}/org/name", "org/"):
        assert split_hub_id(path) is None, path


def test_editor_loads_by_id_from_the_cache_offline(hub_cache):
    by_id = UnifiedEditor.from_pretrained("earl-test/shapes-editor")
    local = UnifiedEditor.from_pretrained(default_checkpoint())
    assert _same_weights(by_id, local)
    assert by_id.config == local.config


def test_revision_by_commit_hash_branch_and_at_sign(hub_cache, tmp_path):
    # a second commit, tagged v2, whose editor.json differs: which snapshot was read is visible
    other = tmp_path / "other"
    import shutil

    shutil.copytree(default_checkpoint(), other)
    assert resolve_model("earl-test/shapes-editor") == hub_cache / "models--earl-test--shapes-editor" / "snapshots" / COMMIT_A
    add_snapshot(hub_cache, "earl-test/shapes-editor", other, COMMIT_B, refs=("v2",))
    snap_b = hub_cache / "models--earl-test--shapes-editor" / "snapshots" / COMMIT_B
    assert resolve_model("earl-test/shapes-editor", revision=COMMIT_B) == snap_b
    assert resolve_model("earl-test/shapes-editor", revision="v2") == snap_b
    assert resolve_model(f"earl-test/shapes-editor@{COMMIT_B}") == snap_b
    assert resolve_model("earl-test/shapes-editor", revision="main").name == COMMIT_A
    editor = UnifiedEditor.from_pretrained("earl-test/shapes-editor", revision=COMMIT_B)
    assert editor.config.image_size == 64
    with pytest.raises(EarlError, match="disagree"):
        resolve_model(f"earl-test/shapes-editor@{COMMIT_B}", revision="main")


def test_missing_id_offline_names_the_id_and_offline_mode(hub_cache):
    with pytest.raises(EarlError, match=r"earl-test/absent.*HF_HUB_OFFLINE"):
        UnifiedEditor.from_pretrained("earl-test/absent")
    with pytest.raises(EarlError, match=r"earl-test/shapes-editor at revision 'nope'.*HF_HUB_OFFLINE"):
        UnifiedEditor.from_pretrained("earl-test/shapes-editor", revision="nope")


def test_a_local_directory_wins_over_an_id_of_the_same_spelling(hub_cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "earl-test" / "shapes-editor").mkdir(parents=True)
    assert resolve_model("earl-test/shapes-editor").resolve() == (tmp_path / "earl-test" / "shapes-editor").resolve()
    with pytest.raises(EarlError, match="a local path, but revision"):
        resolve_model("earl-test/shapes-editor", revision="main")
    with pytest.raises(EarlError, match="no editor.json"):  # the local (empty) directory was the one read
        UnifiedEditor.from_pretrained("earl-test/shapes-editor")


def test_pipelines_and_recipes_take_ids(hub_cache):
    from earl.agents.pipeline import AgentPipeline, default_decomposer
    from earl.train.scalar_rm import ScalarRecipe, _start_editor

    add_snapshot(hub_cache, "earl-test/shapes-decomposer", default_decomposer(), COMMIT_A)
    pipe = EditPipeline.from_pretrained("earl-test/shapes-editor")
    assert _same_weights(pipe.editor, UnifiedEditor.from_pretrained(default_checkpoint()))
    agent = AgentPipeline.from_pretrained("earl-test/shapes-decomposer", "earl-test/shapes-editor")
    assert _same_weights(agent.decomposer.editor, UnifiedEditor.from_pretrained(default_decomposer()))
    start, tok = _start_editor(ScalarRecipe(out_dir="unused", init_from="earl-test/shapes-editor"))
    assert start is not None and tok is start.image_tokenizer
    with pytest.raises(EarlError, match="init_from earl-test/absent: .*HF_HUB_OFFLINE"):
        _start_editor(ScalarRecipe(out_dir="unused", init_from="earl-test/absent"))


@pytest.mark.parametrize("error,message", [
    ("RepositoryNotFoundError", "no such repository on the Hugging Face Hub"),
    ("GatedRepoError", "gated repository.*HF_TOKEN"),
    ("RevisionNotFoundError", "revision 'v9' not found"),
    ("LocalEntryNotFoundError", "could not be reached"),
])
def test_hub_errors_name_the_id_and_the_fix(monkeypatch, error, message):
    import huggingface_hub
    from huggingface_hub import errors

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def snapshot_download(repo_id, **kw):
        import httpx2

        cls = getattr(errors, error)
        if error == "LocalEntryNotFoundError":
            raise cls("from the Hub")
        status = 401 if error == "GatedRepoError" else 404
        response = httpx2.Response(status, request=httpx2.Request("GET", f"https://huggingface.co/api/models/{repo_id}"))
        raise cls("from the Hub", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(EarlError, match=rf"org/missing.*{message}"):
        resolve_model("org/missing", revision="v9")


def test_paths_that_are_not_ids_stay_paths(tmp_path):
    assert resolve_model(tmp_path / "nope") == tmp_path / "nope"
    assert str(resolve_model("nope")) == "nope"


def test_earl_release_and_vision_tokenizer_by_their_ids(tmp_path, monkeypatch):
    """EARL's released checkpoints (BAAI's original format) and BAAI/Emu3-VisionTokenizer, by id: the
    thinking flag is still read from the name, here the repository's."""
    from tests.core.test_emu3_original import CORPUS, train_ranks, write_decoder, write_vision_tokenizer

    weights = write_decoder(tmp_path / "src" / "model", train_ranks(CORPUS))
    write_vision_tokenizer(tmp_path / "src" / "vision")
    cache = tmp_path / "hub"
    add_snapshot(cache, "mair-lab/earl-thinking-sft-simple", tmp_path / "src" / "model", COMMIT_A)
    add_snapshot(cache, "BAAI/Emu3-VisionTokenizer", tmp_path / "src" / "vision", COMMIT_B)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ed = UnifiedEditor.from_pretrained("mair-lab/earl-thinking-sft-simple", vision_tokenizer="BAAI/Emu3-VisionTokenizer")
    assert ed.config.cot and ed.config.prompt_order == "image_instruction"
    state = ed.backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    with pytest.raises(EarlError, match="vision tokenizer BAAI/Emu3-VisionTokenizer-absent: .*HF_HUB_OFFLINE"):
        UnifiedEditor.from_pretrained("mair-lab/earl-thinking-sft-simple", vision_tokenizer="BAAI/Emu3-VisionTokenizer-absent")
