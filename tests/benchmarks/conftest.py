"""Fixtures of the benchmark tests: the judge prompts written here in each benchmark's published file
format (placeholders, criterion lines, file names), so that the tests need nothing outside the
repository. The prompts' wording is this file's own; the benchmarks' prompts are read from wherever
a user keeps them."""

import json

import pytest

from tests.verify.conftest import tiny_vlm_dir  # noqa: F401  (a session fixture: the tiny random VLM)

# GEdit-Bench: two text files, `sc_prompt.txt` (with the `<instruction>` placeholder; shown with the
# source and edited images) and `pq_prompt.txt` (shown with the edited image alone).
GEDIT_SC_PROMPT = (
    "Rate an edit. Two images follow: the original, then the edited one.\n"
    "Reply in JSON: {\"score\": [instruction followed 0-10, edit kept minimal 0-10], \"reasoning\": \"...\"}\n"
    "\n"
    "Editing instruction: <instruction>\n")
GEDIT_PQ_PROMPT = (
    "Rate how the image looks.\n"
    "Reply in JSON: {\"score\": [looks natural 0-10, free of artifacts 0-10], \"reasoning\": \"...\"}\n")

# ImgEdit-Bench: `prompts.json`, one prompt per edit type, each asking for three criteria in lines
# `Name: A number from 1 to 5.` and holding the `<edit_prompt>` placeholder.
IMGEDIT_CRITERIA = {
    "replace": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"),
    "add": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Coherence"),
    "adjust": ("Prompt Compliance", "Visual Seamlessness", "Physical & Detail Fidelity"),
    "remove": ("Prompt Compliance", "Visual Naturalness", "Physical & Detail Integrity"),
    "style": ("Style Fidelity", "Content Preservation", "Rendering Quality"),
    "action": ("Action Fidelity", "Identity Preservation", "Visual & Anatomical Coherence"),
    "extract": ("Object Identity", "Mask Precision", "Visual Quality"),
    "background": ("Instruction Compliance", "Visual Seamlessness", "Physical Consistency"),
    "compose": ("Instruction Compliance", "Visual Naturalness", "Physical Consistency & Fine Detail"),
}


def imgedit_prompt(edit_type: str) -> str:
    lines = "".join(f"{name}: A number from 1 to 5.\n" for name in IMGEDIT_CRITERIA[edit_type])
    return (f"\nGrade this {edit_type} edit on three criteria, each from 1 (failed) to 5 (flawless).\n\n"
            "Example Response Format:\nBrief reasoning: one short sentence.\n" + lines +
            "editing instruction is : <edit_prompt>.\n\nThe images before and after the edit:\n")


@pytest.fixture
def gedit_prompts(tmp_path):
    """A directory holding GEdit-Bench's two judge prompt files."""
    root = tmp_path / "gedit_prompts"
    root.mkdir()
    (root / "sc_prompt.txt").write_text(GEDIT_SC_PROMPT, encoding="utf-8")
    (root / "pq_prompt.txt").write_text(GEDIT_PQ_PROMPT, encoding="utf-8")
    return root


@pytest.fixture
def imgedit_prompts(tmp_path):
    """ImgEdit-Bench's `prompts.json`: one judge prompt for each of the nine edit types."""
    path = tmp_path / "imgedit_prompts" / "prompts.json"
    path.parent.mkdir()
    path.write_text(json.dumps({t: imgedit_prompt(t) for t in IMGEDIT_CRITERIA}, indent=4), encoding="utf-8")
    return path


@pytest.fixture
def tiny_vlm_server(tiny_vlm_dir):  # noqa: F811
    """`earl serve judge`'s server around the tiny random VLM, and a client backend for it."""
    import torch

    from earl.serve.judge import JudgeServer
    from earl.verify.chat import OpenAIChatBackend
    from earl.verify.local_vlm import LocalVLM

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    server = JudgeServer(("127.0.0.1", 0), LocalVLM(tiny_vlm_dir, device="cpu").generate, model_name="tiny",
                         max_batch=8).start()
    yield OpenAIChatBackend(base_url=server.url, timeout=60)
    server.close()
    torch.set_num_threads(threads)
