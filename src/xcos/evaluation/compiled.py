"""The embedding forward for evaluation, eager or compiled with frozen weights.

Compiling with ``torch.compile`` under inductor's ``freezing`` treats the weights as constants:
batch norm is folded into the convolutions and the convolution weights are pre-packed for
oneDNN once, instead of on every call (the speed-up on the development machine is measured by
``bench/evaluate_lfw.py``, figures in doc/performance.md). The price is a one-time compile per
batch shape, worth it where many images are embedded with one set of weights: testing,
benchmarks. Training's validation stays eager: its weights change between calls.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from xcos.models.xcos_model import select_descriptors

Embed = Callable[[torch.Tensor], dict[str, torch.Tensor]]


def embedding_forward(model: torch.nn.Module, compiled: bool, batch_size: int) -> Embed:
    """``model.embed`` [B, 3, S, S] -> descriptors, or its compiled twin with frozen weights.

    The compiled forward is specialised to one batch shape (a new shape would compile again),
    so a shorter last batch is padded to ``batch_size`` with copies of its last image and the
    padding's descriptors are dropped.
    """
    if not compiled:
        return model.embed
    frozen = torch.compile(model.embed, dynamic=False, options={"freezing": True})

    def embed_padded(images: torch.Tensor) -> dict[str, torch.Tensor]:
        count = len(images)
        if count < batch_size:
            padding = images[-1:].expand(batch_size - count, *images.shape[1:])
            images = torch.cat([images, padding]).contiguous(memory_format=torch.channels_last)
        return select_descriptors(frozen(images), slice(0, count))

    return embed_padded
