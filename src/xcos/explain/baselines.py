"""Baseline explanations of one face pair, behind one interface, to compare with the xCos maps.

Every explainer maps ``(model, image_a, image_b)`` to a ``PairExplanation``: an ``[h, w]`` map on
the model's xCos grid and the explained score. A map reads one of two ways (``higher``):
``"similar"`` (higher = the cell makes the two faces MORE similar: the contribution, occlusion) or
``"different"`` (higher = the cell pulls the score down more: the xCos difference map);
``PairExplanation.difference`` gives every map in the second reading, for comparing them.
What is explained is a *target*, a callable from the model's comparison dict (``patch_cosine``,
``attention`` [B, h, w]; ``xcos``, ``cos`` [B]) to a score [B]; the default is the plain cosine.

Explainers follow pytorch-grad-cam: small objects that own their hooks. Use one as a context
manager to keep its hooks for several pairs (``__exit__`` removes them all), or call ``explain``
alone, which removes whatever it added before returning. The model is put in eval mode during
``explain`` and its training flag restored afterwards. Only Grad-CAM computes gradients.

Methods (``EXPLAINERS``): the xCos maps, read three ways: ``xcos`` (the contribution, patch cosine
x attention, which sums to the score), ``difference`` (attention x (1 - patch cosine): where a cell
pulls the score down), ``patch_cosine`` (the cosine map alone); ``decomposition`` (the exact share
of each cell in the recognizer's own cosine, for backbones whose embedding is linear in the
cells, see ``xcos.explain.decomposition``); ``gradcam`` (the paper's baseline), ``occlusion``
(grid-cell sensitivity) and ``random`` (a control).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xcos.evaluation.evaluator import compare_images
from xcos.models.geometry import Spans, cell_window, grid_edges, pixel_spans

Target = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def cosine_target(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The plain cosine of the flattened grids: [B]."""
    return outputs["cos"]


def xcos_target(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The xCos score: [B]."""
    return outputs["xcos"]


@dataclass
class PairExplanation:
    """One method's explanation of one pair.

    ``map``: [h, w] float (face A's map for methods that explain each face separately, whose
    face-B map is ``map_b``).
    ``score``: the explained score of the un-modified pair.
    ``higher``: ``"similar"`` or ``"different"``: what a high value of the map means.
    """

    method: str
    map: np.ndarray
    score: float
    map_b: np.ndarray | None = None
    higher: str = "similar"

    @property
    def difference(self) -> np.ndarray:
        """The map read as "higher = more different" [h, w] (face A's and face B's maps summed
        for methods that explain each face)."""
        combined = self.map if self.map_b is None else self.map + self.map_b
        return combined if self.higher == "different" else -combined


def as_batch(image: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """A face [3, S, S] or [1, 3, S, S] as a float batch [1, 3, S, S] on the model's device."""
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[:2] != (1, 3):
        raise ValueError(f"expected one face [3, S, S] or [1, 3, S, S], got {tuple(image.shape)}")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else image.device
    return image.to(device=device, dtype=torch.float32)


class PairExplainer:
    """Base class: context manager owning its hooks; subclasses implement ``_explain``.

    Args:
        target: maps the comparison dict to the explained score [B] (default: ``out["cos"]``;
            e.g. ``lambda out: out["xcos"]``).
    """

    name = "base"
    higher = "similar"

    def __init__(self, target: Target | None = None, higher: str | None = None) -> None:
        if higher not in (None, "similar", "different"):
            raise ValueError(f"higher: expected 'similar' or 'different', got {higher!r}")
        self.target = target if target is not None else cosine_target
        if higher is not None:  # e.g. Grad-CAM of a dissimilarity target reads "different"
            self.higher = higher
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._open = False

    def __enter__(self) -> PairExplainer:
        self._open = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove_hooks()
        self._open = False

    def remove_hooks(self) -> None:
        """Remove every hook this explainer added."""
        while self._handles:
            self._handles.pop().remove()

    def _attach(self, model: Any) -> None:
        """Register the hooks ``_explain`` needs on ``model`` (none by default)."""

    def explain(self, model: Any, image_a: torch.Tensor, image_b: torch.Tensor) -> PairExplanation:
        """Explain the target score of faces ``image_a``, ``image_b`` ([3, S, S] or [1, 3, S, S]).

        Returns a ``PairExplanation`` whose maps are [h, w], the model's grid.
        """
        was_training = model.training
        model.eval()
        try:
            self._attach(model)
            return self._explain(model, as_batch(image_a, model), as_batch(image_b, model))
        finally:
            model.train(was_training)
            if not self._open:
                self.remove_hooks()

    def _explain(self, model: Any, image_a: torch.Tensor, image_b: torch.Tensor) -> PairExplanation:
        raise NotImplementedError

    def _score(self, outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.target(outputs).float()


class XCosContribution(PairExplainer):
    """The model's own explanation: ``patch_cosine * attention`` [h, w]; it sums to ``xcos``.

    The score is always ``xcos``; ``target`` is accepted for a uniform constructor, not used.
    """

    name = "xcos"

    @torch.no_grad()
    def _explain(self, model: Any, image_a: torch.Tensor, image_b: torch.Tensor) -> PairExplanation:
        outputs = compare_images(model, image_a, image_b)
        return PairExplanation(
            self.name,
            self.reading(outputs)[0].float().cpu().numpy(),
            float(outputs["xcos"][0]),
            higher=self.higher,
        )

    @staticmethod
    def reading(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The map [B, h, w] this reading takes from the comparison dict."""
        return outputs["patch_cosine"] * outputs["attention"]


class XCosDifference(XCosContribution):
    """Where a cell pulls the xCos score down: ``attention * (1 - patch_cosine)`` [h, w].

    It sums to ``1 - xcos``. A low-attention cell has a small contribution whatever its cosine,
    so the lowest contribution is not where the faces differ; this is.
    """

    name = "difference"
    higher = "different"

    @staticmethod
    def reading(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["difference"]  # XCosModel.compare's


class XCosPatchCosine(XCosContribution):
    """The patch cosine map alone (xCos without its attention weights) [h, w]."""

    name = "patch_cosine"

    @staticmethod
    def reading(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return outputs["patch_cosine"]


class RandomMap(PairExplainer):
    """A control: standard-normal [h, w] maps from a generator seeded once per explainer."""

    name = "random"

    def __init__(self, target: Target | None = None, seed: int = 0) -> None:
        super().__init__(target)
        self.rng = np.random.default_rng(seed)

    @torch.no_grad()
    def _explain(self, model: Any, image_a: torch.Tensor, image_b: torch.Tensor) -> PairExplanation:
        outputs = compare_images(model, image_a, image_b)
        height, width = outputs["patch_cosine"].shape[1:]
        random_map = self.rng.standard_normal((height, width))
        return PairExplanation(self.name, random_map, float(self._score(outputs)[0]))


def default_layer(model: Any) -> nn.Module:
    """The module whose output is ``backbone.forward_features``: the backbone's ``grid_layer``
    (part of ``BackboneProtocol``)."""
    return model.backbone.grid_layer


class GradCAM(PairExplainer):
    """Grad-CAM of the target w.r.t. the backbone's last spatial feature map, for each face.

    Per face: channel weights = spatial mean of d(score)/dA [C], map = ReLU(sum_c w_c A_c)
    [h, w]. ``map`` is face A's, ``map_b`` face B's. Gradients are taken with
    ``torch.autograd.grad`` on activations caught by one forward hook, so no parameter ``.grad``
    is touched and no backward hook is needed. With ``detach_cosine`` heads the xCos target
    reaches the backbone only through the attention branch.

    Args:
        target: see ``PairExplainer``.
        layer: module whose output [2, C, h, w] is explained; default ``default_layer(model)``.
    """

    name = "gradcam"

    def __init__(
        self,
        target: Target | None = None,
        layer: nn.Module | None = None,
        higher: str | None = None,
    ) -> None:
        super().__init__(target, higher)
        self.layer = layer
        self._hooked: nn.Module | None = None
        self._activation: torch.Tensor | None = None

    def __enter__(self) -> GradCAM:
        super().__enter__()
        if self.layer is not None:
            self._hook(self.layer)
        return self

    def remove_hooks(self) -> None:
        super().remove_hooks()
        self._hooked = None
        self._activation = None

    def _hook(self, layer: nn.Module) -> None:
        if self._hooked is layer:
            return
        self.remove_hooks()
        self._handles.append(layer.register_forward_hook(self._keep_activation))
        self._hooked = layer

    def _keep_activation(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        if not output.requires_grad:  # frozen backbone: make the map itself a graph leaf
            output = output.detach().requires_grad_(True)
        self._activation = output
        return output

    def _attach(self, model: Any) -> None:
        self._hook(self.layer if self.layer is not None else default_layer(model))

    def _explain(self, model: Any, image_a: torch.Tensor, image_b: torch.Tensor) -> PairExplanation:
        self._activation = None
        with torch.enable_grad():
            score = self._score(compare_images(model, image_a, image_b))
            activation = self._activation
            if activation is None or activation.dim() != 4 or activation.shape[0] != 2:
                raise RuntimeError("GradCAM layer did not produce a [2, C, h, w] map in forward")
            (gradient,) = torch.autograd.grad(score.sum(), activation, allow_unused=True)
        if gradient is None:  # the target does not depend on this layer
            gradient = torch.zeros_like(activation)
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        cams = F.relu((weights * activation.detach()).sum(dim=1)).float().cpu().numpy()
        self._activation = None
        return PairExplanation(
            self.name, cams[0], float(score[0].detach()), map_b=cams[1], higher=self.higher
        )


class Occlusion(PairExplainer):
    """Grid-cell occlusion: map[i, j] = score - score with cell (i, j) filled in BOTH faces.

    Cells are the pixels the backbone's grid cells sit on (``xcos.models.geometry``).
    ``fill="blur"`` replaces them with a box-blurred copy of the face, ``"mean"`` with the
    face's mean colour. ``fill="other"`` is counterfactual: the cell of each face is replaced
    by the same cell of the other face, one face at a time (2*h*w pairs), and the two drops
    are averaged: how much the score would rise if the faces agreed there. All occluded pairs
    are scored in batches of ``batch_size``, without gradients.
    """

    name = "occlusion"

    def __init__(
        self,
        target: Target | None = None,
        fill: Literal["blur", "mean", "other"] = "blur",
        batch_size: int = 64,
    ) -> None:
        super().__init__(target)
        if fill not in ("blur", "mean", "other"):
            raise ValueError(f"fill must be 'blur', 'mean' or 'other', got {fill!r}")
        self.fill = fill
        self.batch_size = batch_size

    def filled(self, image: torch.Tensor, cell: int) -> torch.Tensor:
        """The replacement face [1, 3, S, S] for occluded patches of side ``cell``."""
        if self.fill == "mean":
            return image.mean(dim=(2, 3), keepdim=True).expand_as(image)
        kernel = cell | 1  # odd, so the blurred copy stays aligned with the face
        return F.avg_pool2d(image, kernel, 1, kernel // 2, count_include_pad=False)

    @staticmethod
    def occluded(image: torch.Tensor, fill: torch.Tensor, spans: Spans) -> torch.Tensor:
        """[h*w, 3, S, S]: the face with cell k (row-major; pixels from ``spans``) replaced
        by ``fill``."""
        faces = image.repeat(len(spans) ** 2, 1, 1, 1)
        for cell in range(len(faces)):
            rows, columns = cell_window(cell, spans)
            faces[cell, :, rows, columns] = fill[0, :, rows, columns]
        return faces

    @torch.no_grad()
    def _explain(self, model: Any, image_a: torch.Tensor, image_b: torch.Tensor) -> PairExplanation:
        outputs = compare_images(model, image_a, image_b)
        score = self._score(outputs)[0]
        height, width = outputs["patch_cosine"].shape[1:]
        spans = pixel_spans(grid_edges(model.backbone, image_a.shape[-1]))
        if self.fill == "other":
            cells = height * width
            plain_a, plain_b = image_a.expand(cells, -1, -1, -1), image_b.expand(cells, -1, -1, -1)
            pairs = [
                (plain_a, self.occluded(image_b, image_a, spans)),
                (self.occluded(image_a, image_b, spans), plain_b),
            ]
            scores = torch.stack([self._scores(model, a, b) for a, b in pairs]).mean(dim=0)
        else:
            cell = max(1, image_a.shape[2] // height)
            faces_a = self.occluded(image_a, self.filled(image_a, cell), spans)
            faces_b = self.occluded(image_b, self.filled(image_b, cell), spans)
            scores = self._scores(model, faces_a, faces_b)
        drop = (score - scores).reshape(height, width)
        return PairExplanation(self.name, drop.cpu().numpy(), float(score))

    def _scores(self, model: Any, faces_a: torch.Tensor, faces_b: torch.Tensor) -> torch.Tensor:
        """The target score of pairs [N, 3, S, S] x [N, 3, S, S], in batches."""
        return torch.cat(
            [
                self._score(compare_images(model, part_a, part_b))
                for part_a, part_b in zip(
                    faces_a.split(self.batch_size), faces_b.split(self.batch_size), strict=True
                )
            ]
        )


EXPLAINERS: dict[str, type[PairExplainer]] = {
    "xcos": XCosContribution,
    "difference": XCosDifference,
    "patch_cosine": XCosPatchCosine,
    "gradcam": GradCAM,
    "occlusion": Occlusion,
    "random": RandomMap,
}
