"""The page of `xcos serve` in headless Chromium: pick or drop two SynthFaces faces, click
Verify, read the decision, scores, faces, figures and regions, at desktop and phone widths."""

from __future__ import annotations

import base64
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import headless_chromium
from xcos import Verifier

PHONE = 390  # px: a phone's width (iPhone 12 to 15)
DESKTOP = 1280
STATIC = Path(__file__).resolve().parents[2] / "src" / "xcos" / "serve" / "static"
REGION_NAMES = {
    "left_eye": "eye (image left)",
    "right_eye": "eye (image right)",
    "nose": "nose",
    "mouth": "mouth",
}
IMAGES = ("face-a", "face-b", "figure-paper", "figure-overlay")
LATE_S = 1.5  # s: how late the "late API" answers its GET requests, as on a cold, slow machine


def faces(tiny_synth) -> list[Path]:
    """Two 64x64 faces of one SynthFaces identity (the tiny model's input size)."""
    folder = sorted((tiny_synth / "val").iterdir())[0]
    return sorted(folder.glob("*.png"))[:2]


@pytest.fixture(scope="module")
def verifier(tiny_checkpoint) -> Verifier:
    return Verifier.from_checkpoint(tiny_checkpoint, threshold=0.5, device="cpu")


def serve(app) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread on a free loopback port; yield its URL, then stop
    it (lifespan shutdown included)."""
    import uvicorn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()
        assert not thread.is_alive(), "the server did not stop"


def late_gets(app, delay_s: float):
    """``app`` whose GET answers under /api/ (health, model) come ``delay_s`` late: the page
    fills in the key box, the button and the footer from them, so a test that reads the page
    before they answer fails here every time instead of only on a cold machine."""
    import asyncio

    async def late(scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET" and "/api/" in scope["path"]:
            await asyncio.sleep(delay_s)
        await app(scope, receive, send)

    return late


@pytest.fixture(scope="module", params=["prompt", "late"])
def url(request, verifier) -> Iterator[str]:
    from xcos.serve import create_app

    app = create_app(verifier, max_batch=4, max_wait_ms=5)
    yield from serve(late_gets(app, LATE_S) if request.param == "late" else app)


@pytest.fixture(scope="module", params=["prompt", "late"])
def keyed_url(request, verifier) -> Iterator[str]:
    from xcos.serve import create_app

    app = create_app(verifier, api_key="s3cret")
    yield from serve(late_gets(app, LATE_S) if request.param == "late" else app)


@pytest.fixture(scope="module")
def browser():
    driver = headless_chromium()
    yield driver
    driver.quit()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    """Where screenshots go: $XCOS_ARTIFACTS (CI keeps it) or the test's tmp_path."""
    folder = Path(os.environ.get("XCOS_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def open_page(driver, url: str, width: int) -> None:
    """Load the page in a ``width`` px wide viewport (a phone's, touch and viewport meta
    included, below 500 px), wait until it has heard from the server's health request (it
    marks ``<body data-ready="1">``; the key box and the button depend on the answer), and
    drop the console entries of earlier pages."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 500},
    )
    driver.get(url)
    driver.get_log("browser")
    wait(driver, "document.body && document.body.dataset.ready === '1'")


def wait(driver, script: str, timeout: float = 20):
    """Wait until the JavaScript expression ``script`` is truthy; return its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(f"return {script}"))


def element(driver, id_: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, id_)


def verify(driver, a: Path, b: Path) -> None:
    """Pick ``a`` and ``b`` with the file inputs, click Verify, wait for an answer."""
    assert not element(driver, "verify").is_enabled(), "Verify is enabled without images"
    element(driver, "image-a").send_keys(str(a))
    assert not element(driver, "verify").is_enabled(), "Verify is enabled with one image"
    element(driver, "image-b").send_keys(str(b))
    click_verify(driver)


def click_verify(driver) -> None:
    wait(driver, "!document.getElementById('verify').disabled")
    element(driver, "verify").click()
    wait(
        driver,
        "document.getElementById('verify').dataset.busy !== '1' && "
        "(!document.getElementById('result').hidden || !document.getElementById('error').hidden)",
    )


def screenshot(driver, path: Path) -> None:
    """The whole page (beyond the viewport) as a PNG at ``path``."""
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    print(f"screenshot: {path}")


def severe(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def expected_regions(explanation) -> list[str]:
    """The regions list as the page must word it."""
    lines = []
    for entry in explanation.most_different_regions:
        row, column = entry["cell"]
        name = REGION_NAMES.get(entry["region"], f"cell in row {row + 1}, column {column + 1}")
        lines.append(f"{name} – {100 * entry['share']:.1f}% of the difference")
    return lines


@pytest.mark.slow
@pytest.mark.parametrize("width", [DESKTOP, PHONE])
def test_verify_two_faces_in_the_browser(browser, url, verifier, tiny_synth, artifacts, width):
    a, b = faces(tiny_synth)
    expected = verifier.explain(a, b)
    open_page(browser, url, width)
    assert browser.title == "xCos face verification"
    assert not element(browser, "auth").is_displayed()  # no key asked without --api-key
    verify(browser, a, b)

    assert element(browser, "error").text == ""
    decision = element(browser, "decision").text
    assert decision == ("Same person" if expected.same else "Different people")
    assert element(browser, "score").text == f"{expected.score:.4f}"
    assert element(browser, "threshold").text == "0.5000"
    assert element(browser, "cos").text == f"{expected.cos:.4f}"
    loaded = " && ".join(
        f"document.getElementById('{id_}').complete && "
        f"document.getElementById('{id_}').naturalWidth > 0"
        for id_ in IMAGES
    )
    wait(browser, loaded)
    sizes = {
        id_: browser.execute_script(
            f"const i = document.getElementById('{id_}'); return [i.naturalWidth, i.naturalHeight]"
        )
        for id_ in IMAGES
    }
    assert sizes["face-a"] == sizes["face-b"] == [verifier.input_size] * 2
    paper, overlay = sizes["figure-paper"], sizes["figure-overlay"]
    assert paper[0] > 2 * paper[1] and overlay[1] > overlay[0]  # both layouts, not one twice
    for id_ in IMAGES:
        assert element(browser, id_).is_displayed(), id_
    regions = [item.text for item in element(browser, "regions").find_elements("tag name", "li")]
    assert regions == expected_regions(expected)
    assert "threshold 0.5000" in wait(
        browser,
        "document.getElementById('model').dataset.loaded "
        "&& document.getElementById('model').textContent",
    )

    if width == PHONE:
        assert browser.execute_script("return window.innerWidth") == PHONE
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, f"{overflow} px of horizontal scrolling at {PHONE} px"
        too_wide = browser.execute_script(
            "return Array.from(document.querySelectorAll('main *'))"
            ".filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5)"
            ".map(e => e.id || e.tagName)"
        )
        assert too_wide == []
    screenshot(browser, artifacts / f"serve_{width}px.png")
    assert severe(browser) == []


@pytest.mark.slow
def test_a_file_that_is_not_an_image_shows_the_api_error(
    browser, url, tiny_synth, tmp_path, artifacts
):
    a, b = faces(tiny_synth)
    broken = tmp_path / "holiday.png"
    broken.write_bytes(b"these bytes are not an image")
    open_page(browser, url, DESKTOP)
    verify(browser, broken, b)
    error = element(browser, "error")
    assert error.is_displayed() and error.get_attribute("role") == "alert"
    assert "'image_a'" in error.text, error.text  # the API's message names the image
    assert not element(browser, "result").is_displayed()
    assert not element(browser, "preview-a").is_displayed()  # no broken-image icon
    assert element(browser, "verify").text == "Verify"  # busy state over
    screenshot(browser, artifacts / "serve_error.png")
    # the browser itself reports the refused request (400); the page adds nothing
    logged = severe(browser)
    assert all(re.search(r"api/v1/verify.* 400", e["message"]) for e in logged), logged

    # a new choice clears the message, and the next pair is verified
    element(browser, "image-a").send_keys(str(a))
    assert not error.is_displayed()
    click_verify(browser)
    assert element(browser, "decision").text in ("Same person", "Different people")


DROP = """
const [zoneId, name, base64] = arguments;
const bytes = Uint8Array.from(atob(base64), c => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], name, {type: 'image/png'}));
const zone = document.getElementById(zoneId);
for (const type of ['dragenter', 'dragover', 'drop']) {
  const init = {dataTransfer: transfer, bubbles: true, cancelable: true};
  zone.dispatchEvent(new DragEvent(type, init));
}
"""


@pytest.mark.slow
def test_dropped_files_and_the_api_key(browser, keyed_url, verifier, tiny_synth, artifacts):
    a, b = faces(tiny_synth)
    open_page(browser, keyed_url, DESKTOP)
    key = element(browser, "api-key")
    assert element(browser, "auth").is_displayed()  # health says auth_required
    for zone, path in (("drop-a", a), ("drop-b", b)):
        browser.execute_script(DROP, zone, path.name, base64.b64encode(path.read_bytes()).decode())
    assert element(browser, "name-a").text == a.name and element(browser, "name-b").text == b.name
    assert not element(browser, "verify").is_enabled()  # the key is still missing

    key.send_keys("wrong")
    click_verify(browser)
    assert "API key" in element(browser, "error").text
    key.clear()
    key.send_keys("s3cret")
    click_verify(browser)
    assert not element(browser, "error").is_displayed()
    same = verifier.explain(a, b).same
    assert element(browser, "decision").text == ("Same person" if same else "Different people")
    assert "threshold 0.5000" in wait(
        browser,
        "document.getElementById('model').dataset.loaded "
        "&& document.getElementById('model').textContent",
    )
    screenshot(browser, artifacts / "serve_api_key.png")
    logged = severe(browser)
    assert all(re.search(r"api/v1/verify.* 401", e["message"]) for e in logged), logged


def test_the_page_fetches_nothing_from_outside():
    """Every asset is served by the app: no absolute URL in the page, script or style, and
    only the system's fonts."""
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text(encoding="utf-8")
        assert not re.findall(r"https?://|(?<![:\w])//[\w-]+\.[\w.-]+", text), name
        assert "@import" not in text and "@font-face" not in text and "url(" not in text, name
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(source.startswith(("static/", "data:", "docs")) for source in sources), (
        sources
    )
