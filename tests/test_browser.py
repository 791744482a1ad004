"""Real-browser test: Chromium (from apt) driven by Playwright against `streamlit run app/main.py`.

Starts the server on a free localhost port with tiny random-weight checkpoints, uploads a photo, checks
that the glimpse view renders (plotly figure, crops, metrics) with no exception element on the page,
steps and plays the glimpses, takes a photo with Chromium's fake camera, checks a bad file gives a
message, and saves screenshots under tests/_artifacts/ (git-ignored). Chromium: `apt-get install chromium` (/usr/bin/chromium), or set
MGNET_CHROMIUM to another Chrome/Chromium binary. Playwright's own browser download is not used.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import IMAGENETTE_CLASSES, save_tiny_checkpoints
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "_artifacts"
CHROMIUM = os.environ.get("MGNET_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
STREAMLIT = Path(sys.executable).with_name("streamlit")
CLASSES = IMAGENETTE_CLASSES
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]  # a synthetic camera

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"no Chromium at {CHROMIUM}")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    save_tiny_checkpoints(folder, CLASSES, image_size=64)
    port = _free_port()
    env = dict(
        os.environ, MGNET_CHECKPOINTS=str(folder), MGNET_DEVICE="cpu", OMP_NUM_THREADS="1", BROWSER_PATH=CHROMIUM
    )
    log = open(tmp_path_factory.mktemp("server") / "streamlit.log", "w")
    cmd = [
        str(STREAMLIT) if STREAMLIT.exists() else "streamlit",
        "run",
        "app/main.py",
        "--server.port",
        str(port),
        "--server.address",
        "127.0.0.1",
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.flush()
                raise RuntimeError(f"streamlit did not start:\n{Path(log.name).read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:  # the server and anything it started (kaleido's Chromium) share one process group
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen):
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _photo(path: Path) -> Path:
    img = Image.open(ROOT / "app" / "examples" / "golf_ball_1.jpg").convert("RGB").resize((600, 400))
    img.save(path, format="PNG")
    return path


def _no_exceptions(page):
    assert page.locator("[data-testid='stException']").count() == 0, page.locator(
        "[data-testid='stException']"
    ).first.inner_text()


def test_upload_and_glimpse_view(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1440, "height": 2200})
    page.set_default_timeout(120_000)
    problems = []  # broken images: console errors and failed requests
    page.on("console", lambda m: problems.append(m.text) if "Image source error" in m.text else None)
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(server)
    page.get_by_text("Compute so far").wait_for()  # the example is analysed on opening
    _no_exceptions(page)
    page.screenshot(path=str(ARTIFACTS / "01-opening.png"))

    page.get_by_text("Upload", exact=True).click()
    page.locator("input[type='file']").set_input_files(str(_photo(tmp_path / "my-photo.png")))
    page.get_by_text("my-photo.png · 600×400 px").wait_for()
    page.get_by_text("Glimpse 4 of 4", exact=True).wait_for()
    _no_exceptions(page)
    plots = page.locator(".js-plotly-plot")
    plots.first.wait_for()
    assert plots.count() >= 4  # glimpses, top-5, belief, compute, focus map
    assert page.locator(".js-plotly-plot image").count() >= 1  # the photo is drawn inside the figure
    assert page.locator("[data-testid='stImage'] img").count() >= 2  # zoomed crop + what the network saw
    page.screenshot(path=str(ARTIFACTS / "02-uploaded.png"))

    page.get_by_role("button", name="◀").click()
    page.get_by_text("Glimpse 3 of 4", exact=True).wait_for()
    # one control drives the tab: the glimpse figure has no play button or slider of its own
    assert page.locator("g.updatemenu-button").count() == 0 and page.locator("g.slider-container").count() == 0
    for name, step in (("◀", 2), ("◀", 1), ("▶", 2), ("▶", 3), ("▶", 4)):  # stepping must not break images
        page.get_by_role("button", name=name).click()
        page.get_by_text(f"Glimpse {step} of 4", exact=True).wait_for()
    page.wait_for_timeout(1500)
    _no_exceptions(page)
    assert not problems, problems
    page.screenshot(path=str(ARTIFACTS / "03-stepped.png"))
    page.close()


def test_bad_file_message_then_recovery(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1440, "height": 1400})
    page.set_default_timeout(120_000)
    page.goto(server)
    page.get_by_text("Compute so far").wait_for()
    page.get_by_text("Upload", exact=True).click()
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"definitely not a JPEG")
    page.locator("input[type='file']").set_input_files(str(bad))
    page.get_by_text("broken.jpg could not be used").wait_for()
    _no_exceptions(page)
    page.get_by_text("Compute so far").wait_for()  # the page keeps working (example shown)
    page.screenshot(path=str(ARTIFACTS / "04-bad-file.png"))
    page.close()


def test_camera_photo_is_analysed(server, browser):
    context = browser.new_context(viewport={"width": 1440, "height": 1600}, permissions=["camera"])
    page = context.new_page()
    page.set_default_timeout(120_000)
    page.goto(server)
    page.get_by_text("Compute so far").wait_for()
    page.get_by_text("Camera", exact=True).click()
    page.get_by_text("No photo yet: showing the selected example.").wait_for()
    # Chromium's fake camera streams a synthetic test pattern; a click before the first frame takes nothing.
    page.wait_for_function(
        "() => [...document.querySelectorAll('video')].some(v => v.readyState >= 2 && v.videoWidth > 0)"
    )
    shot = page.get_by_text(re.compile(r"camera\.jpg · \d+×\d+ px"))
    for attempt in range(3):
        page.get_by_role("button", name="Take Photo").click()
        try:
            shot.wait_for(timeout=40_000)
            break
        except sync_api.TimeoutError:
            page.screenshot(path=str(ARTIFACTS / f"07-camera-attempt-{attempt + 1}.png"))
    shot.wait_for()
    page.get_by_text("Glimpse 4 of 4", exact=True).wait_for()
    _no_exceptions(page)
    page.screenshot(path=str(ARTIFACTS / "07-camera.png"))
    context.close()


def test_compare_and_attack_views_render(server, browser):
    page = browser.new_page(viewport={"width": 1440, "height": 2000})
    page.set_default_timeout(180_000)
    page.goto(f"{server}/?view=Compare")
    page.get_by_role("button", name="Compute maps").click()
    page.get_by_text("maps ready").wait_for()
    _no_exceptions(page)
    assert page.get_by_text("failed").count() == 0
    # the saliency grid is laid out at a fixed width and drawn at exactly that width (never squeezed, which
    # made its captions collide): what the page shows is what the export holds
    widths = page.evaluate(
        "() => [...document.querySelectorAll('.js-plotly-plot')].filter(el => el.layout && el.layout.width)"
        ".map(el => [el.layout.width, el._fullLayout.width])"
    )
    assert widths and all(abs(asked - drawn) < 1 for asked, drawn in widths), widths
    page.screenshot(path=str(ARTIFACTS / "05-compare.png"))
    page.goto(f"{server}/?view=Robustness&rob_view=Attack")
    page.get_by_role("button", name="Run attack").click()
    page.get_by_text("attack done").wait_for()
    page.get_by_text("How MGNet's glimpses moved").wait_for()
    _no_exceptions(page)
    page.screenshot(path=str(ARTIFACTS / "06-attack.png"))
    page.close()
