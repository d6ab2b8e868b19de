"""Load test of `xcos serve` on loopback: requests/s and latency with batching on and off.

    .venv/bin/python bench/serve_load.py [-p saved/demo/checkpoints/best.pth] [--clients 16]
        [--requests 160] [--seconds 30] [--rounds 2]

Starts two servers of the same checkpoint on free loopback ports, one batching (--max-batch
16) and one not (--max-batch 1), then runs the rounds: in each, N concurrent clients post face
pairs to one server until --requests are answered or --seconds have passed, then to the other
(the order reversed every other round). Prints requests/s, p50 and p95 latency of each and the
on/off ratio. Faces: SynthFaces test images (data/synthfaces, else generated into a temp dir).
The clients share the machine with the server: the figures are for comparing the two variants.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {"batching on": 16, "batching off": 1}


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-p",
        "--pretrained",
        default=str(REPO / "saved/demo/checkpoints/best.pth"),
        help="an xcos checkpoint (default: the demo's best.pth)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to serve on")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=160, help="requests per variant per round")
    parser.add_argument("--seconds", type=float, default=30, help="time per variant per round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both variants")
    parser.add_argument("--max-wait-ms", type=float, default=5, help="the batching server's wait")
    parser.add_argument("--faces", help="folder of aligned faces (default: SynthFaces test)")
    args = parser.parse_args()
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        parser.error(f"--host {args.host}: this load test runs on a loopback address only")
    return args


def face_files(folder: str | None, workdir: Path) -> list[bytes]:
    """Encoded face images: ``folder``, else SynthFaces' test split (generated if absent)."""
    root = Path(folder) if folder else REPO / "data" / "synthfaces" / "test"
    if not root.is_dir():
        from xcos.data.generators import synthfaces

        synthfaces(str(workdir), {"test": 8}, images_per_identity=4, pairs_per_split=20)
        root = workdir / "test"
    files = sorted(root.rglob("*.png"))[:64]
    if len(files) < 2:
        raise SystemExit(f"no faces (*.png) under {root}")
    return [path.read_bytes() for path in files]


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start_server(args: argparse.Namespace, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port(args.host)
    command = [
        sys.executable,
        "-m",
        "xcos",
        "serve",
        "-p",
        args.pretrained,
        "--host",
        args.host,
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
    ]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return server, f"http://{args.host}:{port}"


def wait_until_up(server: subprocess.Popen, url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server at {url} exited with status {server.returncode}")
        try:
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"the server at {url} did not answer within {timeout:.0f} s")


async def load(url: str, faces: list[bytes], args: argparse.Namespace, total: int, seconds: float):
    """``args.clients`` clients posting random pairs until ``total`` answers or ``seconds``;
    returns (latencies in s, wall seconds, failed requests)."""
    latencies: list[float] = []
    failed = 0
    sent = 0
    rng = random.Random(0)
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal sent, failed
        while sent < total and time.perf_counter() < deadline:
            sent += 1
            a, b = rng.sample(faces, 2)
            upload = {"image_a": ("a.png", a, "image/png"), "image_b": ("b.png", b, "image/png")}
            start = time.perf_counter()
            response = await http.post(f"{url}/api/v1/verify", files=upload)
            latencies.append(time.perf_counter() - start)
            failed += response.status_code != 200

    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(args.clients)))
        return latencies, time.perf_counter() - start, failed


def report(results: dict[str, dict]) -> None:
    print(f"{'variant':<14} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'failed':>6}")
    rates = {}
    for name, result in results.items():
        latencies = np.array(result["latencies"]) * 1000
        rates[name] = len(latencies) / result["seconds"]
        p50, p95 = np.percentile(latencies, [50, 95])
        print(
            f"{name:<14} {len(latencies):>8} {rates[name]:>7.1f} {p50:>7.0f} {p95:>7.0f} "
            f"{result['failed']:>6}"
        )
    print(f"requests/s, batching on / off: {rates['batching on'] / rates['batching off']:.2f}x")


def main() -> None:
    args = arguments()
    with tempfile.TemporaryDirectory() as workdir:
        faces = face_files(args.faces, Path(workdir))
    servers = {name: start_server(args, size) for name, size in VARIANTS.items()}
    try:
        for server, url in servers.values():
            wait_until_up(server, url)
        for _, url in servers.values():  # warm up: first passes allocate and pick kernels
            asyncio.run(load(url, faces, args, args.clients, args.seconds))
        results = {name: {"latencies": [], "seconds": 0.0, "failed": 0} for name in VARIANTS}
        for round_ in range(args.rounds):
            order = list(VARIANTS) if round_ % 2 == 0 else list(VARIANTS)[::-1]
            for name in order:
                latencies, seconds, failed = asyncio.run(
                    load(servers[name][1], faces, args, args.requests, args.seconds)
                )
                results[name]["latencies"] += latencies
                results[name]["seconds"] += seconds
                results[name]["failed"] += failed
        print(
            f"{args.clients} clients, {args.rounds} rounds of up to {args.requests} requests or "
            f"{args.seconds:g} s per variant, {len(faces)} faces, {Path(args.pretrained).name}"
        )
        report(results)
    finally:
        for server, _ in servers.values():
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
