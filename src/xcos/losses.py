"""Loss terms. Each names the model output and the target it reads; the trainer sums them."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from xcos.errors import ConfigError
from xcos.registry import LOSSES


class LossTerm(nn.Module):
    """A weighted loss on ``outputs[output]`` against ``outputs[target]`` or ``batch[target]``.

    ``where`` names batch keys of 0/1 flags: the loss then reads only the rows flagged 1 in
    all of them (for instance ``perturb_cover``: the pairs whose B* is covered), and is 0
    without any.
    """

    def __init__(
        self,
        output: str,
        target: str,
        weight: float = 1.0,
        name: str | None = None,
        where: str | list[str] | None = None,
    ):
        super().__init__()
        self.output, self.target, self.weight = output, target, weight
        self.where = [where] if isinstance(where, str) else list(where or [])
        self.name = name or type(self).__name__

    def pick(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.output not in outputs:
            raise ConfigError(
                f"loss {self.name!r} reads output {self.output!r}, which the model did not "
                f"produce (outputs: {', '.join(sorted(outputs))})"
            )
        return outputs[self.output], self.lookup(self.target, outputs, batch)

    def lookup(
        self, key: str, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """``key`` from the model outputs, else from the batch."""
        source = outputs if key in outputs else batch
        if key not in source:
            raise ConfigError(
                f"loss {self.name!r} reads {key!r}, found neither in the model "
                f"outputs ({', '.join(sorted(outputs))}) "
                f"nor in the batch ({', '.join(sorted(batch))})"
            )
        return source[key]

    def rows(self, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor | None:
        """[B] bool: the rows flagged 1 in every ``where`` key; None without ``where``."""
        if not self.where:
            return None
        missing = [key for key in self.where if key not in batch]
        if missing:
            raise ConfigError(
                f"loss {self.name!r} selects rows by batch key(s) {missing}, which the "
                f"batch does not hold ({', '.join(sorted(batch))}); set data.perturb"
            )
        return torch.stack([batch[key].to(device) > 0.5 for key in self.where]).all(dim=0)

    def forward(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        prediction, target = self.pick(outputs, batch)
        rows = self.rows(batch, prediction.device)
        if rows is not None:
            if not bool(rows.any()):
                return prediction.sum() * 0.0  # keeps the graph; nothing to learn here
            prediction, target = prediction[rows], target[rows]
        return self.weight * self.compute(prediction, target)

    def check_map(self, prediction: torch.Tensor, cells: torch.Tensor, key: str) -> None:
        """A map loss reads cell values ``key`` of its output's shape ([B, h, w]); a box or
        a score would broadcast into a wrong loss rather than fail."""
        if cells.shape != prediction.shape:
            raise ConfigError(
                f"loss {self.name!r}: {key!r} is {list(cells.shape)}, not a map of its "
                f"output {self.output!r} {list(prediction.shape)} (a cell coverage such as "
                "'perturb_coverage')"
            )

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
        where: str | list[str] | None = None,
    ) -> None:
        super().__init__(output, target, weight, name, where)

    def compute(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction.float(), target.float())


@LOSSES.register("locality")
class Locality(LossTerm):
    """A cell should describe its own pixels: with a rectangle of another face pasted into
    face B (B*, ``data.perturb``), B's patch cosine against B* must drop on the cells the
    rectangle covers and stay at 1 on the cells it does not touch.

    Reads ``perturbed_patch_cosine`` [B, h, w] and ``perturb_coverage`` [B, h, w] (the share
    of each cell inside the rectangle, ``XCosModel.cell_coverage``), on the pasted rows
    (``where``). A cell covered by at least ``covered`` of its area adds
    ``relu(cosine - margin)``; a cell the rectangle does not touch adds ``1 - cosine``; the
    cells in between are left free (their receptive field legitimately sees the paste).
    """

    def __init__(
        self,
        output: str = "perturbed_patch_cosine",
        target: str = "perturb_coverage",
        weight: float = 1.0,
        margin: float = 0.5,
        covered: float = 0.5,
        name: str | None = "locality",
        where: str | list[str] | None = "perturb_paste",
    ) -> None:
        super().__init__(output, target, weight, name, where)
        self.margin, self.covered = margin, covered

    def compute(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.check_map(prediction, target, self.target)
        cosine = prediction.float()
        inside, outside = target >= self.covered, target <= 0.0
        drop = F.relu(cosine - self.margin)[inside]
        stay = (1.0 - cosine)[outside]
        return (drop.sum() + stay.sum()) / max(1, int(inside.sum() + outside.sum()))


@LOSSES.register("pointing")
class Pointing(LossTerm):
    """Where two faces of one person differ most should be where another face was pasted: the
    share of the xCos difference map of (A, B*) (``perturbed_difference`` [B, h, w],
    attention x (1 - patch cosine)) that falls on the pasted cells, pushed up by its
    cross-entropy against the cells' coverage (``perturb_coverage`` [B, h, w]).

    By default it reads the pasted rows of same-person pairs (``where``).
    """

    def __init__(
        self,
        output: str = "perturbed_difference",
        target: str = "perturb_coverage",
        weight: float = 1.0,
        name: str | None = "pointing",
        where: str | list[str] | None = ("perturb_paste", "label"),
    ) -> None:
        super().__init__(output, target, weight, name, where)

    def compute(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.check_map(prediction, target, self.target)
        return share_cross_entropy(prediction, target)


def share_cross_entropy(difference: torch.Tensor, wanted: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the shares of a difference map [B, h, w] over its cells against the
    shares of non-negative weights ``wanted`` [B, h, w] (listwise, as ListNet): lowest when the
    map spreads its mass as the weights do. Rows whose weights are all 0 are left out."""
    difference = difference.float().clamp_min(0.0).flatten(1)
    share = difference / difference.sum(dim=1, keepdim=True).clamp_min(1e-12)
    wanted = wanted.float().flatten(1)
    total = wanted.sum(dim=1, keepdim=True)
    rows = total[:, 0] > 0
    if not bool(rows.any()):
        return share.sum() * 0.0  # keeps the graph; nothing to learn here
    wanted = wanted[rows] / total[rows]
    return -(wanted * torch.log(share[rows] + 1e-6)).sum(dim=1).mean()


@LOSSES.register("effect_ranking")
class EffectRanking(LossTerm):
    """The difference map should point where the recognizer's score really responds: its
    shares over the cells (``difference`` [B, h, w], attention x (1 - patch cosine)) against
    the shares of the measured cell effects (``effect`` [B, h, w], ``data.effects``: how much
    the recognizer's cosine rises when B's cell is replaced by A's; negative effects count
    as 0), on the pairs with measured effects (``where``). Distils occlusion into the one
    forward pass of the head.

    ``wanted``: ``"positive"`` shares the positive effects (cells whose replacement lowers the
    cosine get nothing); ``"softmax"`` ranks every cell, ``softmax(effect / (temperature x
    the pair's effect spread))``, so that cells of negative effect are ordered too.
    """

    def __init__(
        self,
        output: str = "difference",
        target: str = "effect",
        weight: float = 1.0,
        wanted: Literal["positive", "softmax"] = "positive",
        temperature: float = 1.0,
        name: str | None = "effect_ranking",
        where: str | list[str] | None = "effect_valid",
    ) -> None:
        super().__init__(output, target, weight, name, where)
        if wanted not in ("positive", "softmax"):
            raise ConfigError(f"effect_ranking.wanted: 'positive' or 'softmax', got {wanted!r}")
        self.wanted, self.temperature = wanted, temperature

    def compute(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        effect = target.float()
        if self.wanted == "positive":
            return share_cross_entropy(prediction, effect.clamp_min(0.0))
        flat = effect.flatten(1)
        spread = flat.std(dim=1, keepdim=True).clamp_min(1e-8) * self.temperature
        return share_cross_entropy(prediction, torch.softmax(flat / spread, dim=1).view_as(effect))


@LOSSES.register("covered_attention")
class CoveredAttention(LossTerm):
    """What a flat cover hides cannot count more than when it was visible: on the pairs whose
    B* is covered (``where``), the attention that (A, B*) puts on the covered cells
    (``perturbed_attention``) should be at most ``ratio`` times what (A, B) put there
    (``attention``, detached). A hinge on the log of the two attention masses.

    Reads ``perturbed_attention``, ``attention`` and ``coverage`` (``perturb_coverage``, the
    share of each cell inside the cover) [B, h, w] from the outputs; a cell counts as covered
    when at least ``covered`` of its area is.
    """

    def __init__(
        self,
        output: str = "perturbed_attention",
        target: str = "attention",
        weight: float = 1.0,
        ratio: float = 0.5,
        covered: float = 0.5,
        name: str | None = "covered_attention",
        where: str | list[str] | None = "perturb_cover",
        coverage: str = "perturb_coverage",
    ) -> None:
        super().__init__(output, target, weight, name, where)
        self.ratio, self.covered, self.coverage = ratio, covered, coverage
        self._coverage: torch.Tensor | None = None

    def forward(
        self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        coverage = self.lookup(self.coverage, outputs, batch)
        rows = self.rows(batch, coverage.device)  # the rows the base class keeps
        self._coverage = coverage if rows is None else coverage[rows]
        return super().forward(outputs, batch)

    def compute(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        coverage = self._coverage.to(prediction.device)
        self.check_map(prediction, coverage, self.coverage)
        cells = (coverage >= self.covered).float()
        keep = cells.flatten(1).sum(dim=1) > 0
        if not bool(keep.any()):
            return prediction.sum() * 0.0
        after = (prediction.float() * cells).flatten(1).sum(dim=1)[keep]
        before = (target.float().detach() * cells).flatten(1).sum(dim=1)[keep]
        excess = torch.log(after + 1e-8) - torch.log(before + 1e-8) - math.log(self.ratio)
        return F.relu(excess).mean()
