"""``xcos serve``: the HTTP API and page of a model (``xcos.serve``), run with uvicorn."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from xcos.cli.common import (
    BUILTIN_HELP,
    Command,
    max_pixels_argument,
    model_verifier,
    non_negative_float,
    positive_float,
    positive_int,
)
from xcos.errors import ConfigError

API_KEY_ENV = "XCOS_API_KEY"
LOOPBACK_NAMES = ("localhost",)

DESCRIPTION = (
    "Serve a model over HTTP: POST /api/v1/verify (multipart image_a, image_b), GET "
    "/api/v1/health, GET /api/v1/model, the page at / and the API docs at /docs. Binds to "
    "127.0.0.1 unless told otherwise; another address needs an API key."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_mutually_exclusive_group()
    model.add_argument("-p", "--pretrained", help=BUILTIN_HELP)
    model.add_argument("--onnx", help="a model exported by `xcos export --onnx` (onnxruntime)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=positive_int, default=8000, help="port to bind (default: 8000)"
    )
    parser.add_argument(
        "--max-batch", type=positive_int, default=16, help="pairs per backbone pass; 1: no batching"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=non_negative_float,
        default=5.0,
        help="longest wait for a batch to fill, in ms (default: 5)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=positive_float,
        default=10.0,
        help="largest image upload in MB (default: 10)",
    )
    max_pixels_argument(parser)
    parser.add_argument(
        "--max-connections",
        type=positive_int,
        default=64,
        help="requests handled at once; more get 503 (bounds the memory held by uploads: each "
        "holds at most 2 x --max-upload-mb) (default: 64)",
    )
    parser.add_argument(
        "--threads", type=positive_int, help="images decoded and aligned at once (default: up to 4)"
    )
    parser.add_argument(
        "--api-key",
        help=f"require Authorization: Bearer KEY on the API (or set {API_KEY_ENV}); needed "
        "to bind to an address other than loopback",
    )
    parser.add_argument("--threshold", type=float, help="decision threshold on the xCos score")
    parser.add_argument("--metrics", help="take the threshold from a test run's metrics.json")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default: auto)")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any address
        return False


def run(args: argparse.Namespace) -> int:
    """Refuse an address other than loopback without an API key; load the model and serve
    it until interrupted."""
    import uvicorn

    from xcos.explain.verifier import Verifier
    from xcos.serve import create_app

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if not is_loopback(args.host) and api_key is None:
        raise ConfigError(
            f"--host {args.host}: binding to an address other than loopback needs an API key "
            f"(--api-key KEY or {API_KEY_ENV}=KEY), so that only your clients use the model"
        )
    if args.onnx:
        verifier = Verifier.from_onnx(
            args.onnx, args.threshold, args.metrics, max_pixels=args.max_pixels
        )
    else:
        verifier = model_verifier(args)
    app = create_app(
        verifier,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_mb=args.max_upload_mb,
        api_key=api_key,
        threads=args.threads,
    )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    info = verifier.info
    print(
        f"serving {info.get('onnx') or info.get('checkpoint')} ({info.get('backbone')}, "
        f"threshold {verifier.threshold:.4f} from {info.get('threshold_source')}) on "
        f"http://{args.host}:{args.port}/ (API docs: /docs)",
        flush=True,
    )
    # The access log has the method, path and query of each request, never a body.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=True,
        log_level="info",
        limit_concurrency=args.max_connections,
    )
    return 0


COMMAND = Command(
    "serve", "serve a model over HTTP: an API and a page", DESCRIPTION, add_arguments, run
)
