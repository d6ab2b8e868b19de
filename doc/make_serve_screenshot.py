"""Make ``doc/images/serve.png``, the README's screenshot of the ``xcos serve`` page.

    .venv/bin/python doc/make_serve_screenshot.py                # after `make demo`
    .venv/bin/python doc/make_serve_screenshot.py -p saved/demo/checkpoints/best.pth \
        --out doc/images/serve.png --width 1100

It generates two faces of one SynthFaces identity (seed 13, never LFW nor any real person)
into a temporary folder, serves the demo model on a free loopback port, drives headless
Chromium (Debian's ``chromium`` and ``chromium-driver``, through Selenium) to upload them and
click Verify, and writes the whole page as a palette PNG.
"""

from __future__ import annotations

import argparse
import base64
import io
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from PIL import Image

from xcos import Verifier
from xcos.data.generators import synthfaces
from xcos.serve import create_app

REPO = Path(__file__).resolve().parents[1]
SEED = 13  # the SynthFaces seed of the two faces shown


def synthetic_pair(folder: Path) -> tuple[Path, Path]:
    """Two faces of the first test identity of a tiny SynthFaces set generated in ``folder``."""
    synthfaces(
        str(folder),
        identities={"train": 2, "val": 2, "test": 2},
        images_per_identity=4,
        pairs_per_split=20,
        one_region_pairs=0,
        seed=SEED,
    )
    identity = sorted((folder / "test").iterdir())[0]
    a, b = sorted(identity.glob("*.png"))[:2]
    return a, b


def start_server(app) -> tuple[str, callable]:
    """``app`` served by uvicorn in a thread on a free loopback port: its URL and a stop()."""
    import uvicorn

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.02)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()

    return f"http://127.0.0.1:{listener.getsockname()[1]}/", stop


def page_screenshot(url: str, a: Path, b: Path, width: int) -> tuple[bytes, str]:
    """The page at ``url`` after verifying ``a`` and ``b``, as PNG bytes, and the decision."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    flags = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage")
    for flag in (*flags, "--hide-scrollbars"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        )
        driver.get(url)
        driver.find_element(By.ID, "image-a").send_keys(str(a))
        driver.find_element(By.ID, "image-b").send_keys(str(b))
        wait = WebDriverWait(driver, 60)
        wait.until(lambda d: d.find_element(By.ID, "verify").is_enabled())
        driver.find_element(By.ID, "verify").click()
        loaded = (
            "return Array.from(document.querySelectorAll('#result img'))"
            ".every(i => i.complete && i.naturalWidth > 0) && "
            "!document.getElementById('result').hidden && "
            "document.getElementById('model').dataset.loaded === '1'"
        )
        wait.until(lambda d: d.execute_script(loaded) or d.find_element(By.ID, "error").text)
        error = driver.find_element(By.ID, "error").text
        if error:
            raise RuntimeError(f"the page shows an error: {error}")
        shot = driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        return base64.b64decode(shot["data"]), driver.find_element(By.ID, "decision").text
    finally:
        driver.quit()


def small_png(png: bytes) -> bytes:
    """``png`` reduced to a 256-colour palette (a screenshot of flat colours and figures)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, format="PNG", optimize=True)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--checkpoint", default="saved/demo/checkpoints/best.pth")
    parser.add_argument("--out", default=str(REPO / "doc" / "images" / "serve.png"))
    parser.add_argument("--width", type=int, default=1100, help="page width in px")
    args = parser.parse_args(argv)
    verifier = Verifier.from_checkpoint(args.checkpoint, device="cpu")
    with tempfile.TemporaryDirectory(prefix="xcos-synth-") as folder:
        a, b = synthetic_pair(Path(folder))
        url, stop = start_server(create_app(verifier))
        try:
            png, decision = page_screenshot(url, a, b, args.width)
        finally:
            stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(small_png(png))
    size = Image.open(out).size
    print(f"{out}: {size[0]}x{size[1]}, {out.stat().st_size // 1024} KB ({decision})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
