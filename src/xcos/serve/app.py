"""The HTTP API of a ``Verifier``: ``create_app(verifier) -> FastAPI``.

GET /api/v1/health, GET /api/v1/model, POST /api/v1/verify (multipart image_a, image_b), the
page at GET / and its assets under /static. A request's images are decoded and aligned in a
bounded thread pool, its face pair joins a micro-batch (one backbone pass for the pairs that
arrive together), and its figures are drawn in the pool again: the event loop only moves bytes,
so it keeps answering while the model works.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from xcos.errors import (
    BadImageError,
    ConfigError,
    DataError,
    ImageTooLargeError,
    SetupError,
    XcosError,
)
from xcos.explain.verifier import Verifier
from xcos.serve.batcher import MicroBatcher
from xcos.serve.render import explanation_body
from xcos.serve.uploads import IMAGE_FIELDS, MB, read_images
from xcos.version import package_version

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"

#: The HTTP status of each kind of error, most specific first.
ERROR_STATUS: tuple[tuple[type[XcosError], int], ...] = (
    (ImageTooLargeError, 413),
    (BadImageError, 400),
    (DataError, 422),  # NoFaceError, an image too small or not aligned
    (SetupError, 503),
    (XcosError, 400),
)


#: ``Authorization: Bearer <key>``; checked by ``_key_check`` (a module global: FastAPI reads
#: the dependency from the annotation, which names it).
BEARER = HTTPBearer(auto_error=False, description="the server's --api-key")


class ErrorBody(BaseModel):
    """Every error: one message, never a stack trace."""

    error: str


ERRORS = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "an image cannot be decoded (named)",
        401: "the API key is missing or wrong",
        413: "an upload over --max-upload-mb, or an image over --max-pixels (named)",
        415: "not multipart/form-data, or a part that is not an image",
        422: "no face found, a missing field (named), or a bad query value",
    }.items()
}

#: The request body of POST /api/v1/verify, for the OpenAPI docs (it is parsed by hand).
VERIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": list(IMAGE_FIELDS),
                    "properties": {
                        name: {"type": "string", "format": "binary", "description": text}
                        for name, text in zip(
                            IMAGE_FIELDS, ("first face", "second face"), strict=True
                        )
                    },
                }
            }
        },
    }
}


class Pool:
    """A bounded thread pool for decoding, alignment and drawing: at most ``threads`` images
    are decoded at once, whatever the number of requests, so memory stays bounded."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="xcos-decode")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            await asyncio.to_thread(executor.shutdown, wait=True)


def create_app(
    verifier: Verifier,
    *,
    max_batch: int = 16,
    max_wait_ms: float = 5.0,
    max_upload_mb: float = 10.0,
    api_key: str | None = None,
    threads: int | None = None,
) -> FastAPI:
    """The API of ``verifier`` (which needs a threshold): batches of at most ``max_batch``
    pairs gathered for at most ``max_wait_ms`` (``max_batch=1``: no batching), uploads of at
    most ``max_upload_mb`` per image, ``api_key`` required as ``Authorization: Bearer`` on
    every /api/v1 route but health when set, ``threads`` decoding at once (default: up to 4)."""
    verifier.require_threshold()
    if max_upload_mb <= 0:
        raise ConfigError(f"max_upload_mb: expected a positive number, got {max_upload_mb}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads: expected a positive number, got {threads}")
    # Eager: a batch waits only for requests being decoded, so a lone one never waits.
    batcher = MicroBatcher(
        lambda pairs: verifier.explain_faces(pairs), max_batch, max_wait_ms, eager=True
    )
    pool = Pool(threads or min(4, os.cpu_count() or 1))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        await batcher.close()
        await pool.close()

    # FastAPIOffline: FastAPI whose /docs and /redoc serve Swagger UI and ReDoc from the
    # package itself, not from a CDN, so the API docs work offline like the page.
    app = FastAPIOffline(
        title="xcos",
        version=package_version(),
        description="Explainable face verification with xCos: is it the same person, and "
        "which parts of the two faces decided it.",
        lifespan=lifespan,
    )
    app.state.verifier, app.state.batcher = verifier, batcher
    limits = {
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "max_upload_mb": max_upload_mb,
        "max_pixels": verifier.max_pixels,
    }
    app.include_router(_open_routes(api_key))
    guarded = APIRouter(prefix="/api/v1", dependencies=[Depends(_key_check(api_key))])
    _add_model_routes(guarded, verifier, batcher, pool, limits)
    app.include_router(guarded)
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    _add_error_handlers(app)
    app.add_middleware(CatchAll)
    return app


def _open_routes(api_key: str | None) -> APIRouter:
    router = APIRouter()

    @router.get("/api/v1/health", summary="is the server up (never needs the key)")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "auth_required": api_key is not None}

    @router.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        index = STATIC / "index.html"
        if not index.is_file():
            raise HTTPException(404, "the page is not installed (xcos/serve/static/index.html)")
        return FileResponse(index, media_type="text/html")

    return router


def _add_model_routes(
    router: APIRouter, verifier: Verifier, batcher: MicroBatcher, pool: Pool, limits: dict
) -> None:
    max_bytes = int(limits["max_upload_mb"] * MB)

    @router.get("/model", summary="the model, its threshold and the server's limits")
    async def model() -> dict[str, Any]:
        return {**verifier.info, **limits}

    @router.post(
        "/verify",
        summary="verify and explain a pair of faces",
        description="The fields of `xcos explain --json`, plus the asked figures and faces "
        "as base64 PNGs.",
        openapi_extra=VERIFY_BODY,
        responses=ERRORS,
    )
    async def verify(
        request: Request,
        figure: Annotated[
            Literal["paper", "overlay", "both", "none"],
            Query(description="figure layouts to return as base64 PNGs"),
        ] = "none",
        faces: Annotated[
            bool, Query(description="return the two aligned faces as base64 PNGs")
        ] = False,
    ) -> JSONResponse:
        images = await read_images(request, max_bytes)
        with batcher.incoming():
            pair = await pool.run(_faces_of, verifier, images)
        explanation = await batcher.submit(pair)
        layouts = {"none": (), "both": ("paper", "overlay")}.get(figure, (figure,))
        return JSONResponse(await pool.run(explanation_body, explanation, layouts, faces))


def _faces_of(verifier: Verifier, images: dict[str, bytes]):
    """Decode and align both images; each upload's bytes are dropped once decoded."""
    return tuple(verifier.face(images.pop(name), name) for name in IMAGE_FIELDS)


def _key_check(api_key: str | None):
    """A dependency refusing (401) requests without ``Authorization: Bearer <api_key>``."""

    async def no_key() -> None:
        return None

    async def check(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> None:
        given = credentials.credentials if credentials is not None else ""
        # Constant time: the comparison must not tell how much of a guess was right.
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(
                401,
                "missing or wrong API key: send the header Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return no_key if api_key is None else check


def _add_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(err.detail)}, err.status_code, headers=err.headers)

    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        messages = [
            f"{'.'.join(str(part) for part in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
            for e in err.errors()
        ]
        return JSONResponse({"error": "; ".join(messages)}, 422)

    async def xcos_error(request: Request, err: XcosError) -> JSONResponse:
        status = next(code for kind, code in ERROR_STATUS if isinstance(err, kind))
        log.info("%s %s refused (%d): %s", request.method, request.url.path, status, err)
        return JSONResponse({"error": str(err)}, status)

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(XcosError, xcos_error)


class CatchAll:
    """ASGI middleware: an unexpected exception becomes 500 {"error": "internal error"}, its
    traceback logged here only (never with the request body) and not sent to the client."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            log.exception("internal error on %s %s", scope["method"], scope["path"])
            if not started:  # else the response is half sent: nothing more to say
                await JSONResponse({"error": "internal error"}, 500)(scope, receive, send)
