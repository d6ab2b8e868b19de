"""Loss terms. Each names the model output and the target it reads; the trainer sums them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from xcos.registry import LOSSES


class LossTerm(nn.Module):
    """A weighted loss on ``outputs[output]`` against ``outputs[target]`` or ``batch[target]``."""

    def __init__(self, output: str, target: str, weight: float = 1.0, name: str | None = None):
        super().__init__()
        self.output, self.target, self.weight = output, target, weight
        self.name = name or type(self).__name__

    def pick(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.output not in outputs:
            raise KeyError(
                f"loss {self.name!r} reads output {self.output!r}, which the model did not "
                f"produce (outputs: {', '.join(sorted(outputs))})"
            )
        source = outputs if self.target in outputs else batch
        if self.target not in source:
            raise KeyError(
                f"loss {self.name!r} reads target {self.target!r}, found neither in the model "
                f"outputs ({', '.join(sorted(outputs))}) "
                f"nor in the batch ({', '.join(sorted(batch))})"
            )
        return outputs[self.output], source[self.target]

    def forward(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        prediction, target = self.pick(outputs, batch)
        return self.weight * self.compute(prediction, target)

    def compute(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@LOSSES.register("cross_entropy")
class CrossEntropy(LossTerm):
    """Cross-entropy of (margin) logits [N, C] against class indices [N]."""

    def __init__(
        self,
        output: str = "logits",
        target: str = "identity",
        weight: float = 1.0,
        label_smoothing: float = 0.0,
        name: str | None = "identity",
    ) -> None:
        super().__init__(output, target, weight, name)
        self.label_smoothing = label_smoothing

    def compute(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(prediction.float(), target, label_smoothing=self.label_smoothing)


@LOSSES.register("mse")
class MeanSquaredError(LossTerm):
    """Mean squared error, by default between the xCos score and the target cosine."""

    def __init__(
        self,
        output: str = "xcos",
        target: str = "target_cos",
        weight: float = 1.0,
        name: str | None = "xcos_mse",
    ) -> None:
        super().__init__(output, target, weight, name)

    def compute(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction.float(), target.float())
