"""Training-step speed of the demo model under the precision / memory-format switches.

Measures, side by side in one process and interleaved round by round (so machine noise hits
every variant alike), the median time of one forward+backward+update step of the model in a
config, for fp32, bf16 autocast, channels-last and both. Prints images/s and the ratio to fp32.

    python bench/train_step.py [--config configs/demo_synthetic.json] [--batch 16] [--rounds 5]
        [--compile]   # also torch.compile'd variants
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F

from xcos.config import load_config
from xcos.models.xcos_model import build_model

VARIANTS = {  # name: (bf16 autocast, channels-last, torch.compile)
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "channels_last": (False, True, False),
    "bf16+channels_last": (True, True, False),
}
COMPILED = {
    "fp32+compile": (False, False, True),
    "bf16+channels_last+compile": (True, True, True),
}


def make_step(config, batch_pairs: int, bf16: bool, channels_last: bool, compile: bool = False):
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=160).train()
    forward = torch.compile(model) if compile else model
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    size = model.input_size
    batch = {
        "image_a": torch.randn(batch_pairs, 3, size, size).contiguous(memory_format=fmt),
        "image_b": torch.randn(batch_pairs, 3, size, size).contiguous(memory_format=fmt),
        "identity_a": torch.randint(0, 160, (batch_pairs,)),
        "identity_b": torch.randint(0, 160, (batch_pairs,)),
    }
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    autocast = (
        (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    )

    def step() -> float:
        start = time.perf_counter()
        with autocast():
            out = forward(batch)
        loss = F.cross_entropy(out["logits"].float(), out["identity"])
        loss = loss + F.mse_loss(out["xcos"].float(), out["target_cos"].float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo_synthetic.json")
    parser.add_argument("--batch", type=int, default=16, help="pairs per step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile'd variants (slow start)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    variants = VARIANTS | (COMPILED if args.compile else {})
    steps = {name: make_step(config, args.batch, *flags) for name, flags in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for name, step in steps.items():
        warm_up = step() + step()  # the first calls of a compiled variant compile it
        if name in COMPILED:
            print(f"{name}: compiled and warmed up in {warm_up:.1f} s")
    names = list(steps)
    for round_number in range(args.rounds):
        # reversed order in odd rounds: no variant always runs first or after the same one
        for name in names if round_number % 2 == 0 else names[::-1]:
            times[name].append(steps[name]())
    images = 2 * args.batch
    base = statistics.median(times["fp32"])
    print(
        f"{config.model.backbone} batch {args.batch} pairs, {args.threads} threads, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(f"{'variant':<28} {'step s':>8} {'images/s':>9} {'speed-up vs fp32':>17}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<28} {median:>8.3f} {images / median:>9.1f} {base / median:>16.2f}x")


if __name__ == "__main__":
    main()
