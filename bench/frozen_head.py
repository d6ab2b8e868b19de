"""Head training on a frozen recognizer: cached backbone outputs vs running the backbone.

One training step (forward, MSE to the recognizer's cosine, backward, Adam update) of the xCos
head of ``configs/xcos_dlib_lfw.json`` (dlib's ResNet, frozen) on a batch of pairs, fed either
the backbone's cached outputs (what ``data.cache_features`` does) or the face images (the
backbone runs in every step). Both variants run interleaved in this process on the same batch;
the script prints steps/s of each and the ratio.

    python bench/frozen_head.py [--config configs/xcos_dlib_lfw.json] [--pairs 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from xcos.config import load_config
from xcos.models.xcos_model import build_model


def step(model, optimizer, batch) -> None:
    outputs = model(batch)
    loss = torch.nn.functional.mse_loss(outputs["xcos"], outputs["target_cos"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(model, optimizer, batch, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step(model, optimizer, batch)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/xcos_dlib_lfw.json")
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="steps per round and variant")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = load_config(args.config)
    model = build_model(config.model).train()
    head = [p for group in model.parameter_groups().values() for p in group]
    optimizer = torch.optim.Adam(head, lr=1e-3)
    size = model.input_size
    images = {k: torch.rand(args.pairs, 3, size, size) * 2 - 1 for k in ("image_a", "image_b")}
    with torch.no_grad():
        cached = {side: model.backbone_outputs(images[f"image_{side}"]) for side in "ab"}
    features = {
        f"{key}_{side}": value for side, out in cached.items() for key, value in out.items()
    }
    works = {  # the cached variant is ~60x faster: 10x the steps for a comparable round
        "cached outputs": lambda: timed(model, optimizer, features, args.steps * 10),
        "images (backbone each step)": lambda: timed(model, optimizer, images, args.steps),
    }
    rates: dict[str, list[float]] = {name: [] for name in works}
    for round_number in range(args.rounds):
        # reversed order in odd rounds: neither variant always runs first
        for name in list(works) if round_number % 2 == 0 else list(works)[::-1]:
            rates[name].append(works[name]())
    print(f"{config.name}: {args.pairs} pairs per step, torch threads {torch.get_num_threads()}")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, rate in medians.items():
        print(f"{name:<30}{rate:8.2f} steps/s")
    ratio = medians["cached outputs"] / medians["images (backbone each step)"]
    print(f"speed-up of the cache: {ratio:.1f}x")


if __name__ == "__main__":
    main()
