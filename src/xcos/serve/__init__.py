"""``xcos serve``: verify and explain face pairs over HTTP (FastAPI), the model loaded once
and concurrent requests batched into one backbone pass. ``create_app(verifier)`` builds it."""

from xcos.serve.app import create_app

__all__ = ["create_app"]
