"""`earl app`: the page in a real headless Chromium (Selenium), and the Edit handler on its own.

The browser test starts `earl app` with the bundled checkpoint and no model arguments on a free
port, uploads an image, edits it, checks the result and the download are real images, uploads a
corrupt file and reads the error in the page, then edits a ShapesEdit sample picked from the page's
examples to show it still serves. It needs Debian's chromium and chromium-driver (.ci/run installs
them); without them it fails and says how to install them.
Set EARL_APP_SCREENSHOT=path to save a screenshot of the page after the first edit (docs/app.png).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
INSTALL = "apt-get update && apt-get install -y chromium chromium-driver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as r:
        return r.read()


@pytest.fixture()
def app_url(tmp_path):
    port = _free_port()
    earl = Path(sys.executable).with_name("earl")
    cmd = [str(earl)] if earl.is_file() else [sys.executable, "-m", "earl.cli"]
    log = open(tmp_path / "app.log", "w+")
    proc = subprocess.Popen([*cmd, "app", "--port", str(port), "--host", "127.0.0.1"], stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 300
        while True:
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"earl app exited with {proc.returncode}:\n{log.read()}")
            try:
                _fetch(url)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"earl app did not answer on {url} within 300 s")
                time.sleep(0.5)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture()
def browser(tmp_path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"the app's browser test needs Debian's Chromium and its driver; missing {', '.join(missing)}. "
                    f"Install them as root: {INSTALL}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _source_png(path: Path) -> Path:
    from earl.shapes.dataset import generate_samples
    from earl.shapes.render import render

    sample = next(generate_samples("simple", 1, 0, part="test"))
    render(sample.source_scene).save(path)
    return path


def test_app_in_a_browser(app_url, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, proc = app_url
    t0 = time.time()
    browser.get(url)
    wait = WebDriverWait(browser, 240, poll_frequency=0.25)
    css = lambda sel: browser.find_element(By.CSS_SELECTOR, sel)  # noqa: E731
    status = lambda: css("#status").text  # noqa: E731

    def upload(path: Path) -> None:
        """Upload, and wait until the page shows this file (its name is in the image's URL)."""
        # Gradio builds the page in JavaScript after load: on a busy machine the input comes later
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#source input[type=file]"))
        css("#source input[type=file]").send_keys(str(path))
        wait.until(lambda d: any(path.name in (im.get_attribute("src") or "")
                                 for im in d.find_elements(By.CSS_SELECTOR, "#source img")))

    def instruct(text: str) -> None:
        box = css("#instruction textarea")
        box.clear()
        box.send_keys(text)

    def edit_until(word: str) -> str:
        before = status()
        css("#edit").click()
        wait.until(lambda d: status() != before and word in status())
        return status()

    def result_image() -> Image.Image:
        src = wait.until(lambda d: css("#result img").get_attribute("src"))
        im = Image.open(io.BytesIO(_fetch(src)))
        im.load()
        return im

    # 1. upload an image, type an instruction, edit: the result is a real image of the input's size
    upload(_source_png(tmp_path / "source.png"))
    instruct("Make the circle blue.")
    assert "Edited" in edit_until("Edited"), status()
    result = result_image()
    assert result.size == (64, 64) and any(lo < hi for lo, hi in result.convert("RGB").getextrema())
    link = wait.until(lambda d: css("#download a").get_attribute("href"))
    download = Image.open(io.BytesIO(_fetch(link)))
    assert download.format == "PNG" and download.size == (64, 64)
    if os.environ.get("EARL_APP_SCREENSHOT"):
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(os.environ["EARL_APP_SCREENSHOT"])

    # 2. a corrupt upload: a clear message in the page, the old result cleared
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    upload(tmp_path / "corrupt.png")
    message = edit_until("Error")
    assert "corrupt.png is not a readable image" in message, message
    assert not css("#result").find_elements(By.TAG_NAME, "img") and not css("#download").find_elements(By.TAG_NAME, "a")

    # 3. an empty instruction is refused the same way
    upload(tmp_path / "source.png")
    instruct(" ")
    message = edit_until("Error")
    assert "instruction is empty" in message, message

    # 4. still serving: pick a ShapesEdit sample from the examples (image and instruction) and edit it
    rows = browser.find_elements(By.CSS_SELECTOR, "#samples tbody tr")
    assert len(rows) == 4
    rows[3].click()  # the shortest edit of the four
    wait.until(lambda d: "triangle" in css("#instruction textarea").get_attribute("value"))
    message = edit_until("Edited")
    assert "Edited" in message, message
    result_image()
    assert proc.poll() is None
    print(f"browser test: {time.time() - t0:.1f} s in the page")


# --- the Edit handler without a browser: tiny models, fast -----------------------------------------

@pytest.fixture()
def png(tmp_path):
    return {"path": str(_source_png(tmp_path / "in.png")), "orig_name": "in.png"}


def test_handler_reports_bad_input_in_the_status_box(tiny_editor, png, tmp_path):
    pytest.importorskip("gradio")  # the app extra; CI installs it with dev
    from earl.app import Editing
    from earl.pipeline import EditPipeline

    editing = Editing(EditPipeline(tiny_editor))
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    cases = [({"path": str(tmp_path / "bad.jpg"), "orig_name": "bad.jpg"}, "x", "bad.jpg is not a readable image"),
             (None, "x", "no image"),
             (png, "  ", "instruction is empty"),
             (png, "make the red circle blue . " * 400, "too long")]
    for image, instruction, message in cases:
        with pytest.warns(UserWarning):
            result, gallery, plan, files, status = editing(image, instruction)
        assert result is None and files is None and status.startswith("**Error:**") and message in status, status
        assert gallery["visible"] is False
    result, gallery, plan, files, status = editing(png, "make the red circle blue .", 1.0, 1.0, 3, 2)
    assert status.startswith("Edited: 2 samples") and len(gallery["value"]) == 2 and len(files) == 2
    assert all(Image.open(f).size == (64, 64) for f in files)


def test_handler_in_agent_mode_shows_the_plan_and_each_step(tiny_editor, png):
    pytest.importorskip("gradio")
    from earl.agents.decomposer import ScriptedDecomposer
    from earl.agents.editor import PipelineEditor
    from earl.agents.pipeline import AgentPipeline
    from earl.app import Editing

    plan = "recolour | the red circle | blue\nremove | the square | nothing"
    editing = Editing(agent=AgentPipeline(ScriptedDecomposer(lambda r: plan), PipelineEditor(tiny_editor)))
    result, gallery, text, files, status = editing(png, "make the circle blue and remove the square", 2.0)
    assert text == "recolour | the red circle | blue\nremove | the square | nothing"
    steps = gallery["value"]
    assert steps[0][1] == "0. input" and len(steps) == 3 and status.startswith("Edited in 2 steps"), status
    assert editing.agent.editor.guidance_scale == 2.0 and len(files) == 1
    result, gallery, text, files, status = Editing(agent=AgentPipeline(
        ScriptedDecomposer(lambda r: "dance | the circle | wildly"), PipelineEditor(tiny_editor)))(png, "dance")
    assert text == "(no plan)" and status.startswith("**Plan failed") and len(gallery["value"]) == 1


def test_agent_mode_without_a_decomposer_says_so_and_uses_the_editor(tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    from earl.app import load_pipelines

    monkeypatch.setenv("EARL_DECOMPOSER", str(tmp_path / "no-decomposer"))
    pipe, agent, notice = load_pipelines(agent=True)
    assert agent is None and pipe is not None
    assert "Agent mode is unavailable" in notice and "no-decomposer" in notice and "editor alone" in notice


def test_earl_imports_without_gradio():
    code = "import sys; sys.modules['gradio'] = None\nimport earl, earl.cli, earl.pipeline, earl.agents\n" \
           "from earl.cli import main\nassert main(['app', '--port', '1']) == 2"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert 'pip install -e ".[app]"' in out.stderr

