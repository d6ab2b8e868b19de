"""`xcos serve`'s HTTP API: results equal to ``Verifier.explain``, every error status as JSON
without a trace, batching of concurrent requests, bounded memory, nothing written or logged."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.helpers.bombs import grey_png
from xcos import Verifier
from xcos.cli import main
from xcos.io_utils import file_sha256
from xcos.serve import create_app

THRESHOLD = 0.3
VERIFY = "/api/v1/verify"


@pytest.fixture(scope="module")
def verifier(tiny_checkpoint) -> Verifier:
    return Verifier.from_checkpoint(tiny_checkpoint, threshold=THRESHOLD, device="cpu")


@pytest.fixture(scope="module")
def pairs(tiny_synth) -> list[tuple[bytes, bytes]]:
    """Pairs of encoded 64x64 SynthFaces images (PNG bytes, as a browser uploads them)."""
    files = sorted((tiny_synth / "val").rglob("*.png"))[:12]
    images = [path.read_bytes() for path in files]
    return [(images[i], images[(i * 5 + 1) % len(images)]) for i in range(len(images))]


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A valid PNG of 12000 x 12000 grey pixels: 144 MP (over the 40 MP limit), about 165 KB."""
    return grey_png(12000, 12000)


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def serve(verifier):
    """Factory: a started TestClient of ``create_app(verifier, **options)``."""
    with ExitStack() as stack:

        def start(**options) -> TestClient:
            client = TestClient(create_app(verifier, **options), raise_server_exceptions=False)
            return stack.enter_context(client)

        yield start


def files(a: bytes | None, b: bytes | None, kind: str = "image/png") -> dict:
    named = {"image_a": a, "image_b": b}
    return {name: (f"{name}.png", data, kind) for name, data in named.items() if data is not None}


def check_same(body: dict, expected) -> None:
    """A response body equal to ``Verifier.explain`` on the same pair."""
    assert body["score"] == pytest.approx(expected.score, abs=1e-5)
    assert body["cos"] == pytest.approx(expected.cos, abs=1e-5)
    assert body["same"] == expected.same and body["threshold"] == pytest.approx(THRESHOLD)
    for key in ("patch_cosine", "attention", "contribution", "difference"):
        assert np.allclose(body[key], getattr(expected, key), atol=1e-5), key
    assert body["most_different_cells"] == expected.most_different_cells


def check_error(response: httpx.Response, status: int, *words: str) -> None:
    """An error: the status, JSON {"error": message} naming ``words``, no stack trace."""
    assert response.status_code == status, response.text
    assert list(response.json()) == ["error"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    for word in words:
        assert word in response.json()["error"], (word, response.text)


def check_serving(client: TestClient, pair: tuple[bytes, bytes], **headers) -> None:
    response = client.post(VERIFY, files=files(*pair), headers=headers)
    assert response.status_code == 200, response.text


def decoded_png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    assert image.format == "PNG"
    return image


def test_health_and_model(serve, tiny_checkpoint):
    client = serve(max_batch=8, max_wait_ms=2)
    assert client.get("/api/v1/health").json() == {"status": "ok", "auth_required": False}
    info = client.get("/api/v1/model").json()
    assert info["backbone"] and info["grid"] == [4, 4] and info["input_size"] == 64
    assert info["threshold"] == THRESHOLD and info["threshold_source"] == "--threshold"
    assert info["checkpoint_sha256"] == file_sha256(tiny_checkpoint)
    assert (info["max_batch"], info["max_wait_ms"], info["max_upload_mb"]) == (8, 2, 10)
    assert info["max_pixels"] == 40_000_000


def test_verify_equals_verifier_explain_with_figures_and_faces(serve, verifier, pairs):
    client = serve()
    a, b = pairs[0]
    expected = verifier.explain(a, b)
    body = client.post(VERIFY, files=files(a, b)).json()
    check_same(body, expected)
    assert body["figures"] == {} and "faces" not in body
    assert body["most_different_regions"] == expected.most_different_regions
    body = client.post(VERIFY, params={"figure": "paper", "faces": "true"}, files=files(a, b))
    body = body.json()
    check_same(body, expected)
    assert list(body["figures"]) == ["paper"] and decoded_png(body["figures"]["paper"]).width
    for key, face in zip("ab", expected.faces, strict=True):
        assert np.array_equal(np.asarray(decoded_png(body["faces"][key]).convert("RGB")), face)
    body = client.post(VERIFY, params={"figure": "both"}, files=files(a, b)).json()
    assert sorted(body["figures"]) == ["overlay", "paper"]
    overlay, paper = (decoded_png(body["figures"][name]) for name in ("overlay", "paper"))
    assert overlay.size != paper.size  # two layouts, two figures


def test_openapi_docs_the_upload_and_the_page_is_served(serve):
    client = serve()
    schema = client.get("/openapi.json").json()
    verify = schema["paths"][VERIFY]["post"]
    fields = verify["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert fields["image_a"]["format"] == fields["image_b"]["format"] == "binary"
    assert {p["name"] for p in verify["parameters"]} == {"figure", "faces"}
    assert {"413", "415", "422"} <= set(verify["responses"])
    docs = client.get("/docs")  # Swagger UI served by the app itself: works offline
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    assert "http://" not in docs.text and "https://" not in docs.text
    for asset in re.findall(r'(?:src|href)="([^"]+)"', docs.text):
        assert client.get(asset).status_code == 200, asset
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "<html" in page.text.lower()
    script = client.get("/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    check_error(client.get("/no/such/page"), 404)


def test_every_error_is_json_named_and_the_server_keeps_serving(serve, pairs, bomb):
    client = serve(max_upload_mb=0.5)
    good = pairs[1]
    cases = [
        (files(good[0], b"\x00" * 600_000), 413, ["image_b", "0.5 MB", "--max-upload-mb"]),
        (files(b"\x00" * 1_200_000, good[1]), 413, ["request body", "--max-upload-mb"]),
        (files(bomb, good[1]), 413, ["image_a", "megapixels", "--max-pixels"]),
        (files(good[0], b"not an image at all"), 400, ["image_b", "cannot decode"]),
        (files(png(np.full((200, 200, 3), 128, np.uint8)), good[1]), 422, ["image_a", "face"]),
        (files(good[0], None), 422, ["image_b", "missing"]),
        (files(good[0], good[1], kind="text/plain"), 415, ["image_a", "text/plain"]),
    ]
    for upload, status, words in cases:
        check_error(client.post(VERIFY, files=upload), status, *words)
        check_serving(client, good)
    check_error(client.post(VERIFY, json={"image_a": "x"}), 415, "multipart/form-data")
    check_serving(client, good)
    check_error(client.post(VERIFY, params={"figure": "pie"}, files=files(*good)), 422, "figure")
    check_serving(client, good)
    check_error(client.get(VERIFY), 405)


def test_an_unexpected_error_is_500_logged_here_only(serve, verifier, pairs, monkeypatch, caplog):
    client = serve()

    def broken(pairs):
        raise RuntimeError("a bug in the model code")

    monkeypatch.setattr(verifier, "explain_faces", broken)
    with caplog.at_level(logging.ERROR):
        response = client.post(VERIFY, files=files(*pairs[0]))
    assert response.status_code == 500 and response.json() == {"error": "internal error"}
    assert "a bug in the model code" in caplog.text and "Traceback" in caplog.text
    monkeypatch.undo()
    check_serving(client, pairs[0])


def test_api_key(serve, pairs):
    client = serve(api_key="s3cret")
    assert client.get("/api/v1/health").json() == {"status": "ok", "auth_required": True}
    check_error(client.post(VERIFY, files=files(*pairs[0])), 401, "API key")
    wrong = {"Authorization": "Bearer s3cre"}
    check_error(client.post(VERIFY, files=files(*pairs[0]), headers=wrong), 401)
    check_error(client.get("/api/v1/model"), 401)
    right = {"Authorization": "Bearer s3cret"}
    check_serving(client, pairs[0], **right)
    assert client.get("/api/v1/model", headers=right).status_code == 200


@asynccontextmanager
async def asgi_client(app) -> AsyncIterator[httpx.AsyncClient]:
    """An async client calling the app in this event loop, its lifespan run around it."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        yield client


async def post_all(app, uploads: list[dict], **params) -> list[httpx.Response]:
    """All ``uploads`` posted at once to the app (its lifespan run around them)."""
    async with asgi_client(app) as client:
        posts = [client.post(VERIFY, files=upload, params=params) for upload in uploads]
        return await asyncio.gather(*posts)


def count_batches(verifier, monkeypatch) -> list[int]:
    """The number of pairs of each backbone pass from now on."""
    sizes: list[int] = []
    compare = verifier.scorer.compare

    def counted(faces):
        sizes.append(len(faces) // 2)
        return compare(faces)

    monkeypatch.setattr(verifier.scorer, "compare", counted)
    return sizes


def test_concurrent_requests_are_batched_and_equal_to_explain(verifier, pairs, monkeypatch):
    references = [verifier.explain(a, b) for a, b in pairs]  # one pass per pair
    chosen = [i % len(pairs) for i in range(32)]
    sizes = count_batches(verifier, monkeypatch)
    app = create_app(verifier, max_batch=16, max_wait_ms=50)
    responses = asyncio.run(post_all(app, [files(*pairs[i]) for i in chosen]))
    for response, i in zip(responses, chosen, strict=True):
        assert response.status_code == 200, response.text
        check_same(response.json(), references[i])
    assert sum(sizes) == 32 and len(sizes) < 32 and max(sizes) > 1
    assert max(sizes) <= 16

    sizes.clear()
    app = create_app(verifier, max_batch=1)  # batching off
    responses = asyncio.run(post_all(app, [files(*pairs[i]) for i in chosen[:8]]))
    assert [r.status_code for r in responses] == [200] * 8 and sizes == [1] * 8


def peak_rss_reset() -> bool:
    """Reset this process's peak RSS (VmHWM); False where Linux does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def test_sixteen_bombs_at_once_are_refused_in_bounded_memory(verifier, pairs, bomb):
    if not peak_rss_reset():
        pytest.skip("cannot reset the peak RSS here (/proc/self/clear_refs)")
    before = peak_rss_mb()
    app = create_app(verifier)
    responses = asyncio.run(post_all(app, [files(bomb, pairs[0][1])] * 16))
    grown = peak_rss_mb() - before
    for response in responses:
        check_error(response, 413, "image_a", "--max-pixels")
    # Decoding one of them takes 144 MB (greyscale) and 432 MB as RGB; sixteen, gigabytes.
    assert grown < 100, f"peak RSS grew by {grown:.0f} MB"


def test_nothing_is_written_to_disk_or_logged(serve, pairs, bomb, tmp_path, monkeypatch, caplog):
    cwd, temp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir(), temp.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("TMPDIR", str(temp))
    caplog.set_level(logging.DEBUG)
    client = serve()
    a, b = pairs[2]
    big = a + bytes(range(256)) * 6000  # 1.5 MB: Starlette would spool it to a temp file
    uploads = [files(big, b), files(bomb, b), files(a, b"\x89PNG broken"), files(a, None)]
    statuses = [client.post(VERIFY, files=upload).status_code for upload in uploads]
    assert statuses == [200, 413, 400, 422]
    assert list(cwd.iterdir()) == [] and list(temp.iterdir()) == []
    logged = caplog.text
    assert caplog.records  # the refusals were logged, without the images
    for data in (big[8:40], big[-64:], bomb[16:48], a[16:48], b[16:48]):
        assert repr(data)[2:-1] not in logged
        assert base64.b64encode(data).decode()[:24] not in logged


def test_health_is_answered_while_a_batch_runs(verifier, pairs, monkeypatch):
    explain_faces = verifier.explain_faces

    def slow(faces):
        time.sleep(1.5)
        return explain_faces(faces)

    monkeypatch.setattr(verifier, "explain_faces", slow)
    app = create_app(verifier)

    async def scenario() -> tuple[float, int]:
        async with asgi_client(app) as client:
            verify = asyncio.create_task(client.post(VERIFY, files=files(*pairs[0])))
            await asyncio.sleep(0.4)  # the batch is running now
            start = time.perf_counter()
            health = await client.get("/api/v1/health")
            waited = time.perf_counter() - start
            assert health.status_code == 200 and not verify.done()
            return waited, (await verify).status_code

    waited, status = asyncio.run(scenario())
    assert waited < 0.3 and status == 200


def test_serve_refuses_a_public_address_without_a_key(tiny_checkpoint, monkeypatch, capsys):
    import uvicorn

    monkeypatch.delenv("XCOS_API_KEY", raising=False)
    status = main(["serve", "-p", str(tiny_checkpoint), "--host", "0.0.0.0"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "API key" in err
    runs = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: runs.append((app, options)))
    monkeypatch.setenv("XCOS_API_KEY", "k")
    argv = ["serve", "-p", str(tiny_checkpoint), "--host", "0.0.0.0", "--threshold", "0.3"]
    assert main([*argv, "--port", "8123", "--max-batch", "4", "--max-connections", "9"]) == 0
    ((app, options),) = runs
    assert options["host"] == "0.0.0.0" and options["port"] == 8123
    assert options["limit_concurrency"] == 9  # more requests at once get 503
    client = TestClient(app)
    assert client.get("/api/v1/model").status_code == 401
    model = client.get("/api/v1/model", headers={"Authorization": "Bearer k"}).json()
    assert model["max_batch"] == 4 and model["threshold"] == 0.3
