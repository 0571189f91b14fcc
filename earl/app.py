"""`earl app`: a small web UI (Gradio) over the editor or the multi-agent pipeline.

    earl app                         # the bundled editor on http://127.0.0.1:7860
    earl app --agent --port 8080     # decomposer -> steps -> editor: the plan and each step's image

Upload an image or pick a ShapesEdit sample, type an instruction, press Edit; the result can be
downloaded. A bad input (an unreadable upload, an empty or too-long instruction) is explained in
the status box under the result and the app keeps serving. With `--agent` and no decomposer the
page says so and edits with the editor alone.

Gradio is optional (`pip install -e ".[app]"`): this module imports it, `earl` itself does not.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing leaves the machine

import gradio as gr  # noqa: E402
from PIL import Image  # noqa: E402

from earl.agents.pipeline import AgentPipeline  # noqa: E402
from earl.errors import DataError, EarlError  # noqa: E402
from earl.io import load_image, save_image  # noqa: E402
from earl.pipeline import EditPipeline  # noqa: E402
from earl.shapes.dataset import generate_samples  # noqa: E402
from earl.shapes.render import render  # noqa: E402

SAMPLE_SPLIT, N_SAMPLES = "complex", 4
# The samples are 64x64 pictures of flat shapes: show them large, without blurring.
CSS = """.pixelated img { image-rendering: pixelated; }
#source img, #result img { width: 100%; height: 100%; object-fit: contain; }"""


def sample_scenes(n: int = N_SAMPLES) -> list[tuple[Image.Image, str]]:
    """The first `n` samples of ShapesEdit's fixed complex test set: (source image, instruction)."""
    return [(render(s.source_scene), s.instruction) for s in generate_samples(SAMPLE_SPLIT, n, 0, part="test")]


def load_pipelines(model: str | None = None, agent: bool = False):
    """(editor pipeline or None, agent pipeline or None, notice for the page). Agent mode without a
    usable decomposer falls back to the editor and says why."""
    notice = ""
    if agent:
        try:
            return None, AgentPipeline.from_pretrained(editor=model), ""
        except EarlError as e:
            notice = f"**Agent mode is unavailable:** {e}. Edits below use the editor alone."
    return EditPipeline.from_pretrained(model), None, notice


def read_upload(payload) -> Image.Image:
    """The uploaded image (Gradio's raw file payload) as RGB, or an `EarlError` saying what is wrong."""
    if not payload:
        raise EarlError("no image: upload one or pick a sample below")
    path = payload["path"] if isinstance(payload, dict) else str(payload)
    name = (payload.get("orig_name") if isinstance(payload, dict) else None) or Path(path).name
    try:
        return load_image(path)
    except DataError:
        raise EarlError(f"{name} is not a readable image; upload a PNG, JPEG or WebP file") from None


class Editing:
    """The page's Edit button: one request in, (result, gallery, plan, files, status) out."""

    def __init__(self, pipe=None, agent=None):
        self.pipe, self.agent = pipe, agent
        self._out = tempfile.TemporaryDirectory(prefix="earl-app-")

    def __call__(self, image, instruction, guidance_scale=1.0, temperature=0.0, seed=0, num_samples=1):
        t0 = time.time()
        try:
            source = read_upload(image)
            if self.agent is not None:
                images, gallery, plan, status = self._agent(source, instruction, guidance_scale)
            else:
                images, gallery, plan, status = self._edit(source, instruction, guidance_scale, temperature,
                                                           seed, num_samples)
        except EarlError as e:
            gr.Warning(str(e))
            return None, self._gallery([]), "", None, f"**Error:** {e}"
        files = self._save(images)
        return images[0], self._gallery(gallery), plan, files, f"{status} ({time.time() - t0:.1f} s)"

    def _gallery(self, items: list):
        """Agent mode always shows its steps; editor mode shows samples only when there are several."""
        return gr.update(value=items, visible=self.agent is not None or bool(items))

    def _edit(self, source, instruction, guidance_scale, temperature, seed, num_samples):
        n = int(num_samples)
        res = self.pipe(source, instruction, num_samples=n, guidance_scale=float(guidance_scale),
                        temperature=float(temperature), seed=int(seed or 0))
        gallery = [(im, f"sample {i + 1}") for i, im in enumerate(res.images)] if n > 1 else []
        thinking = "\n\n".join(t for t in res.thinking if t)
        return res.images, gallery, thinking, f"Edited: {n} sample{'s' * (n > 1)}"

    def _agent(self, source, instruction, guidance_scale):
        self.agent.editor.guidance_scale = float(guidance_scale)
        res = self.agent(source, instruction)
        gallery = [(source, "0. input")]
        for i, rec in enumerate(res.steps, 1):
            verdict = "" if rec.passed is None else f" [{'pass' if rec.passed else 'FAIL'} after {rec.attempts}]"
            if rec.image is not None:
                gallery.append((rec.image, f"{i}. {rec.instruction}{verdict}"))
        plan = res.plan.text() if res.plan is not None else "(no plan)"
        if res.failure:
            status = f"**Plan failed ({res.failure}):** {res.error}" + (
                "; the editor got the instruction itself" if res.fallback else "; the image is unchanged")
        else:
            status = f"Edited in {len(res.steps)} step{'s' * (len(res.steps) != 1)}"
        return res.images, gallery, plan, status

    def _save(self, images: list[Image.Image]) -> list[str]:
        out = Path(tempfile.mkdtemp(dir=self._out.name))
        names = ["edited.png"] if len(images) == 1 else [f"edited_{i}.png" for i in range(len(images))]
        for im, name in zip(images, names):
            save_image(im, out / name)
        return [str(out / name) for name in names]


def build_app(pipe=None, agent=None, notice: str = "") -> gr.Blocks:
    """The page, for an `EditPipeline` (`pipe`) or an `AgentPipeline` (`agent`)."""
    editing = Editing(pipe, agent)
    examples_dir = Path(editing._out.name) / "samples"
    examples_dir.mkdir()
    examples = []
    for i, (im, instruction) in enumerate(sample_scenes()):
        save_image(im, examples_dir / f"sample_{i}.png")
        examples.append([str(examples_dir / f"sample_{i}.png"), instruction])

    mode = "multi-agent pipeline (decomposer, then one editor call per step)" if agent else "editor"
    with gr.Blocks(title="earl: image editing", analytics_enabled=False, delete_cache=(3600, 86400)) as app:
        app.editing = editing  # keeps the output folder alive as long as the app
        gr.Markdown(f"# earl: autoregressive image editing\nMode: {mode}.")
        if notice:
            gr.Markdown(notice, elem_id="notice")
        with gr.Row():
            with gr.Column():
                image = gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], height=320,
                                 elem_id="source", elem_classes="pixelated")
                instruction = gr.Textbox(label="Instruction", lines=2, elem_id="instruction",
                                         placeholder="e.g. Make the red circle blue.")
                button = gr.Button("Edit", variant="primary", elem_id="edit")
                with gr.Accordion("Sampling", open=True):
                    guidance = gr.Slider(1.0, 5.0, value=1.0, step=0.5, label="Guidance scale")
                    temperature = gr.Slider(0.0, 2.0, value=0.0, step=0.1, visible=agent is None,
                                            label="Temperature (0: greedy)")
                    with gr.Row(visible=agent is None):
                        seed = gr.Number(value=0, precision=0, label="Seed")
                        num_samples = gr.Slider(1, 8, value=1, step=1, label="Samples (need temperature > 0)")
                gr.Examples(examples, inputs=[image, instruction],
                            label=f"ShapesEdit samples (the first {len(examples)} of the {SAMPLE_SPLIT} test set)",
                            elem_id="samples")
            with gr.Column():
                result = gr.Image(label="Edited", type="pil", height=320, interactive=False, elem_id="result",
                                  elem_classes="pixelated")
                status = gr.Markdown("Upload an image or pick a sample, then press Edit.", elem_id="status")
                gallery = gr.Gallery(label="Steps" if agent else "Samples", columns=4, height="auto",
                                     visible=agent is not None, elem_id="gallery", elem_classes="pixelated")
                plan = gr.Textbox(label="Plan" if agent else "Thinking", lines=3, interactive=False, elem_id="plan",
                                  visible=agent is not None or pipe.editor.config.cot)
                files = gr.File(label="Download", file_count="multiple", interactive=False, elem_id="download")
        # preprocess=False: the upload reaches `read_upload` as a file, so an unreadable one gets our message
        button.click(editing, inputs=[image, instruction, guidance, temperature, seed, num_samples],
                     outputs=[result, gallery, plan, files, status], preprocess=False)
    return app


def serve(model: str | None = None, agent: bool = False, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Load the model(s), then serve the page until interrupted."""
    pipe, agent_pipe, notice = load_pipelines(model, agent)
    if notice:
        print(notice.replace("**", ""), flush=True)
    app = build_app(pipe, agent_pipe, notice)
    try:
        app.queue(default_concurrency_limit=1).launch(server_name=host, server_port=port, css=CSS, ssr_mode=False,
                                                      max_file_size="20mb", footer_links=[])
    except OSError:
        raise EarlError(f"cannot serve on {host}:{port}: the port is in use or the address is not this "
                        "machine's; choose another --port or --host") from None
