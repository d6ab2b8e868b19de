"""Cost of the xCos head: its forward+backward time as a share of the backbone's.

The model splits where ``XCosModel.forward`` does: the backbone turns the 2B images of B pairs
into spatial maps [2B, C, 7, 7] (``backbone_outputs``); everything after it is the xCos part:
the grid head (``describe``) and the comparison of the two faces (``compare``: patch cosine,
attention, their weighted sum, the plain cosine). The backbone is timed on the images with a
fixed output gradient; the head on detached backbone outputs that require grad, so its backward
includes the gradient for its input, as in training. The identity head and the target network
are left out: they are not the xCos head. Both parts run in training mode, interleaved round
by round, medians reported.

    python bench/head_cost.py [--batch 8] [--rounds 5] [--device cpu|cuda]
        [--amp none|bf16|fp16] [--channels-last] [--depth 50]

Default: IR-SE-50 at 112x112 with the head of configs/xcos_train_config.json; target <= 2%.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import torch
from timing import interleave, median

from xcos.config import load_config
from xcos.models.xcos_model import XCosModel, build_model, split_descriptors
from xcos.runtime import autocast_factory as autocast_for

HEAD_CONFIG = "configs/xcos_train_config.json"
IR_SE_50 = {"type": "ir_se", "depth": 50, "width": 1.0, "embedding_dim": None, "input_size": 112}


def head_model(backbone: dict[str, Any] | None = None, config: str = HEAD_CONFIG) -> XCosModel:
    """``backbone`` (default IR-SE-50) with the xCos head of ``config``; no identity head and
    the self target, which add nothing to the head's cost."""
    layer = {
        "model": {
            "backbone": backbone or IR_SE_50,
            "identity_head": None,
            "target": {"type": "self"},
            "pretrained": None,
        }
    }
    return build_model(load_config(config, [layer]).model)


def head_step(model: XCosModel, features: torch.Tensor, autocast: Callable) -> None:
    """Forward+backward of everything after the backbone, on spatial maps [2B, C, h, w]."""
    model.head.zero_grad(set_to_none=True)
    features.grad = None
    with autocast():
        descriptors_a, descriptors_b = split_descriptors(model.describe({"features": features}))
        outputs = model.compare(descriptors_a, descriptors_b)
    # Both scores: xcos trains the attention branch (the cosine map is detached in the
    # published recipe), cos reaches the grid head; their sum runs every backward path.
    (outputs["xcos"].sum() + outputs["cos"].sum()).backward()


def measure_head_cost(
    model: XCosModel,
    batch_pairs: int,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
    rounds: int = 5,
) -> dict[str, Any]:
    """Median forward+backward seconds of the backbone and of the xCos head, interleaved.

    Returns ``batch_pairs``, ``images`` (2 x pairs), ``backbone_s``, ``head_s`` (median seconds
    per forward+backward) and ``share`` (head_s / backbone_s).
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device).train().to(memory_format=fmt)
    autocast = autocast_for(amp, device)
    size = model.input_size
    images = torch.randn(2 * batch_pairs, 3, size, size, device=device)
    images = images.contiguous(memory_format=fmt)
    with torch.no_grad(), autocast():
        sample = model.backbone_outputs(images)["features"]
    # The head gets maps of the dtype and layout the backbone really emits.
    head_input = sample.detach().clone().requires_grad_(True)
    grad_features = torch.randn_like(sample)

    def backbone_step() -> None:
        model.backbone.zero_grad(set_to_none=True)
        with autocast():
            features = model.backbone_outputs(images)["features"]
        features.backward(grad_features)

    works = {
        "backbone": backbone_step,
        "head": lambda: head_step(model, head_input, autocast),
    }
    times = interleave(works, device, rounds)
    backbone_s, head_s = median(times["backbone"]), median(times["head"])
    return {
        "batch_pairs": batch_pairs,
        "images": 2 * batch_pairs,
        "backbone_s": backbone_s,
        "head_s": head_s,
        "share": head_s / backbone_s,
    }


def format_result(result: dict[str, Any]) -> str:
    """Both times and the share."""
    backbone = f"backbone ({result['images']} images)"
    head = f"xCos head ({result['batch_pairs']} pairs)"
    rows = [
        f"{'part':<28} {'fwd+bwd ms':>11}",
        f"{backbone:<28} {result['backbone_s'] * 1e3:>11.2f}",
        f"{head:<28} {result['head_s'] * 1e3:>11.2f}",
        f"head / backbone: {result['share'] * 100:.2f}% (target <= 2%)",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="pairs (2x images)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--depth", type=int, default=50, help="IR-SE depth (50: IR-SE-50)")
    args = parser.parse_args()
    model = head_model({**IR_SE_50, "depth": args.depth})
    device = torch.device(args.device)
    result = measure_head_cost(model, args.batch, device, args.amp, args.channels_last, args.rounds)
    print(
        f"IR-SE-{args.depth} {model.input_size}x{model.input_size} + xCos head of "
        f"{HEAD_CONFIG}: {args.device}, amp {args.amp}, channels_last {args.channels_last}, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds"
    )
    print(format_result(result))


if __name__ == "__main__":
    main()
