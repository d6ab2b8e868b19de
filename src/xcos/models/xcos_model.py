"""The composed xCos model: backbone -> grid head -> xCos comparison (+ identity head, target)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xcos.checkpoints import load_weights, load_weights_file, read_state_dict
from xcos.errors import ConfigError
from xcos.models.backbones.protocol import BackboneProtocol, missing_members
from xcos.models.geometry import box_coverage, edge_fractions
from xcos.models.xcos_head import difference_map, patch_cosine
from xcos.registry import BACKBONES, HEADS, IDENTITY_HEADS, TARGETS

log = logging.getLogger(__name__)


class XCosModel(nn.Module):
    """Takes and returns dicts.

    Batch keys: ``image_a``, ``image_b`` [B, 3, H, W] (normalised RGB), or instead the frozen
    backbone's cached outputs ``features_a``, ``features_b`` [B, C, h, w] (and ``embedding_a``,
    ``embedding_b`` [B, D] when ``cos`` is ``"embedding"``); optional ``identity_a``,
    ``identity_b`` [B] (class indices, for the identity head).

    Output keys: ``patch_cosine``, ``attention`` [B, h, w]; ``xcos``, ``cos`` [B];
    ``target_cos`` [B] (when a target is set); ``logits`` [2B, classes] and ``identity`` [2B]
    (when the identity head is set and identities are in the batch); with B* in the batch
    (``xcos.data.perturb``), the ``compare_perturbed`` outputs and ``perturb_coverage``
    [B, h, w], the share of each cell inside ``perturb_box`` (the perturbation losses' target).

    Args:
        cos: what the plain ``cos`` score is: ``"grid"``, the cosine of the flattened grid
            features, or ``"embedding"``, the cosine of the backbone's own embeddings (a
            pretrained recognizer's score, which the xCos plug-in is trained to explain).
        freeze_backbone: the backbone never trains: no gradients, always in eval mode.
        calibrate: the xCos score is the recognizer's own cosine (``cos`` = ``"embedding"``):
            each pair's patch distances ``1 - patch_cosine`` are scaled by one factor so that
            ``sum(attention * patch_cosine)`` equals it (``calibrated``). The head then decides
            only how ``1 - cos`` is shared over the cells; its own weighted sum is output as
            ``head_xcos`` (what its MSE loss trains), and every map keeps the head's ranking.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        target: nn.Module | None = None,
        identity_head: nn.Module | None = None,
        cos: str = "grid",
        freeze_backbone: bool = False,
        calibrate: bool = False,
    ) -> None:
        super().__init__()
        if cos not in ("grid", "embedding"):
            raise ConfigError(f"model.cos: expected 'grid' or 'embedding', got {cos!r}")
        if calibrate and cos != "embedding":
            raise ConfigError(
                "model.calibrate: xCos is calibrated to the recognizer's own cosine; set "
                "model.cos to 'embedding'"
            )
        if not isinstance(backbone, BackboneProtocol):
            raise ConfigError(
                f"model.backbone: {type(backbone).__name__} is not a backbone "
                f"(xcos.models.backbones.BackboneProtocol); it lacks "
                f"{', '.join(missing_members(backbone))}"
            )
        if cos == "embedding" and not backbone.embedding_dim:
            raise ConfigError("model.cos is 'embedding' but the backbone has no embedding layer")
        self.backbone = backbone
        self.head = head
        self.target = target
        self.identity_head = identity_head
        self.cos_source = cos
        self.freeze_backbone = freeze_backbone
        self.calibrate = calibrate
        # A plain tuple, not a buffer: checkpoints stay as they were, and compiled graphs
        # see a constant.
        self.cell_edge_fractions = edge_fractions(backbone)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> XCosModel:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # frozen: BN statistics and dropout never switch to training
        return self

    @property
    def input_size(self) -> int:
        """Side of the square aligned faces the backbone expects."""
        return self.backbone.input_size

    @property
    def face_template(self) -> str:
        """The alignment template the backbone was trained on (see ``xcos.data.align``)."""
        return self.backbone.face_template

    def backbone_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The backbone's spatial map ``features`` [B, C, h, w] and, when the ``cos`` score
        needs it, its ``embedding`` [B, D]."""
        if self.cos_source == "embedding":
            out = self.backbone(images)
            return {"features": out["grid"], "embedding": out["embedding"]}
        return {"features": self.backbone.forward_features(images)}

    def describe(self, backbone_outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Face descriptors from backbone outputs: ``grid`` [B, c, h, w] (+ ``embedding``)."""
        described = {"grid": self.head.grid_features(backbone_outputs["features"])}
        if "embedding" in backbone_outputs:
            described["embedding"] = backbone_outputs["embedding"]
        return described

    def embed(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Descriptors of aligned faces [B, 3, H, W]: ``grid`` (+ ``embedding``), see
        ``describe``. Slice them with ``select_descriptors``."""
        return self.describe(self.backbone_outputs(images))

    def compare(
        self, descriptors_a: dict[str, torch.Tensor], descriptors_b: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """xCos comparison of two batches of descriptors (see ``XCosHead.forward``), plus
        ``difference`` [B, h, w]: attention x (1 - patch cosine), how much each cell pulls the
        xCos score down from a perfect match (it sums to ``1 - xcos``). With ``cos`` =
        ``"embedding"``, ``cos`` is the cosine of the backbone's embeddings."""
        outputs = dict(self.head(descriptors_a["grid"], descriptors_b["grid"]))
        if self.cos_source == "embedding":
            outputs["cos"] = embedding_cosine(
                descriptors_a["embedding"], descriptors_b["embedding"]
            )
        if self.calibrate:
            outputs.update(calibrated(outputs, outputs["cos"]))
        outputs["difference"] = difference_map(outputs["patch_cosine"], outputs["attention"])
        return outputs

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        sides = ["a", "b", "perturbed"] if has_perturbed(batch) else ["a", "b"]
        if "features_a" in batch:  # cached outputs of the frozen backbone
            backbone_outputs = {
                "features": torch.cat([batch[f"features_{side}"] for side in sides]),
            }
            if self.cos_source == "embedding":
                embeddings = [batch[f"embedding_{side}"] for side in sides]
                backbone_outputs["embedding"] = torch.cat(embeddings)
        else:  # one backbone pass for every face
            images = torch.cat([batch[f"image_{side}"] for side in sides])
            backbone_outputs = self.backbone_outputs(images)
        descriptors = split_descriptors(self.describe(backbone_outputs), len(sides))
        descriptors_a, descriptors_b = descriptors[0], descriptors[1]
        outputs = self.compare(descriptors_a, descriptors_b)
        if len(descriptors) == 3:
            outputs.update(self.compare_perturbed(descriptors_a, descriptors_b, descriptors[2]))
        if self.identity_head is not None and "identity_a" in batch:
            labels = torch.cat([batch["identity_a"], batch["identity_b"]])
            grids = torch.cat([descriptors_a["grid"], descriptors_b["grid"]])
            outputs["logits"] = self.identity_head(grids.flatten(1), labels)
            outputs["identity"] = labels
        if self.target is not None:
            outputs["target_cos"] = self.target(batch, outputs)
        if "perturb_box" in batch:
            outputs["perturb_coverage"] = self.cell_coverage(batch["perturb_box"])
        return outputs

    def cell_coverage(self, boxes: torch.Tensor) -> torch.Tensor:
        """[B, h, w]: the share of each grid cell, where it really sits on the face
        (``geometry.grid_edges``), inside each box [B, 4] (fractions of the face side)."""
        edges = torch.tensor(self.cell_edge_fractions, dtype=torch.float32, device=boxes.device)
        return box_coverage(boxes.float(), edges)

    def compare_perturbed(
        self,
        descriptors_a: dict[str, torch.Tensor],
        descriptors_b: dict[str, torch.Tensor],
        descriptors_perturbed: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Outputs about B*, face B with a rectangle pasted or covered (``xcos.data.perturb``):
        ``perturbed_patch_cosine`` [B, h, w], B against B* cell by cell (gradients reach both
        grids, whatever ``detach_cosine``); ``perturbed_xcos`` [B], ``perturbed_attention``
        and ``perturbed_difference`` (attention x (1 - patch cosine)) [B, h, w], A against
        B*."""
        against_a = self.head(descriptors_a["grid"], descriptors_perturbed["grid"])
        against_b = self.head(descriptors_b["grid"], descriptors_perturbed["grid"])
        return {
            "perturbed_patch_cosine": patch_cosine(
                descriptors_b["grid"], descriptors_perturbed["grid"]
            ),
            "perturbed_xcos": against_a["xcos"],
            "perturbed_attention": against_a["attention"],
            "perturbed_difference": difference_map(
                against_a["patch_cosine"], against_a["attention"]
            ),
            "perturbed_self_difference": difference_map(
                against_b["patch_cosine"], against_b["attention"]
            ),
        }

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by part, for separate optimizers or parameter groups."""
        attention = self.head.attention
        attention_ids = {id(p) for p in attention.parameters()} if attention is not None else set()
        groups = {
            "backbone": list(self.backbone.parameters()),
            "grid": [p for p in self.head.parameters() if id(p) not in attention_ids],
            "attention": list(attention.parameters()) if attention is not None else [],
            "identity_head": (
                list(self.identity_head.parameters()) if self.identity_head is not None else []
            ),
        }
        return {name: [p for p in params if p.requires_grad] for name, params in groups.items()}


def calibrated(outputs: dict[str, torch.Tensor], score: torch.Tensor) -> dict[str, torch.Tensor]:
    """The head's maps with xCos equal to ``score`` [B]: every patch distance
    ``1 - patch_cosine`` of a pair scaled by ``(1 - score) / (1 - head xCos)``, so that
    ``sum(attention * patch_cosine) = 1 - (1 - score) = score`` while the attention, and the
    ranking and shares of the difference map, stay the head's. Returns ``patch_cosine``,
    ``xcos`` and ``head_xcos`` (the head's own weighted sum)."""
    head = outputs["xcos"]
    scale = (1.0 - score.float()) / (1.0 - head.float()).clamp_min(1e-6)
    patch = 1.0 - (1.0 - outputs["patch_cosine"]) * scale[:, None, None]
    return {
        "patch_cosine": patch,
        "xcos": (patch * outputs["attention"]).sum(dim=(1, 2)),
        "head_xcos": head,
    }


def embedding_cosine(embedding_a: torch.Tensor, embedding_b: torch.Tensor) -> torch.Tensor:
    """Cosine of two batches of embeddings [B, D] -> [B]."""
    a = F.normalize(embedding_a.float(), dim=1)
    b = F.normalize(embedding_b.float(), dim=1)
    return (a * b).sum(dim=1).clamp(-1.0, 1.0)


def select_descriptors(descriptors: dict[str, torch.Tensor], index: Any) -> dict[str, torch.Tensor]:
    """The descriptors of the faces at ``index`` (any tensor index: slice, indices, mask)."""
    return {key: value[index] for key, value in descriptors.items()}


def split_descriptors(
    descriptors: dict[str, torch.Tensor], parts: int = 2
) -> list[dict[str, torch.Tensor]]:
    """A batch of descriptors cut into ``parts`` equal blocks (the A and B faces of a pair
    batch, and B* when there is one)."""
    size = next(iter(descriptors.values())).shape[0] // parts
    return [select_descriptors(descriptors, slice(k * size, (k + 1) * size)) for k in range(parts)]


def has_perturbed(batch: dict[str, torch.Tensor]) -> bool:
    """Whether the batch carries B* (``data.perturb``) as an image or cached outputs."""
    return "image_perturbed" in batch or "features_perturbed" in batch


def descriptors_to(
    descriptors: dict[str, torch.Tensor], device: torch.device | str
) -> dict[str, torch.Tensor]:
    """Descriptors as float32 on ``device``."""
    return {key: value.float().to(device) for key, value in descriptors.items()}


def build_model(model_cfg: Any, num_classes: int | None = None) -> XCosModel:
    """Build an ``XCosModel`` from the ``model`` section of a ``Config``.

    ``num_classes`` (identities of the training set) is needed only with an identity head.
    """
    backbone = BACKBONES.build(model_cfg.backbone, "model.backbone")
    if model_cfg.pretrained is not None:
        hint = "import the recognizer with `xcos import` and use the architecture it names"
        load_weights_file(
            backbone, model_cfg.pretrained, "model.pretrained", "model.backbone", hint=hint
        )
    head = HEADS.build(model_cfg.head, "model.head", in_channels=backbone.out_channels)
    target = TARGETS.build(model_cfg.target, "model.target")
    identity_head = None
    if model_cfg.identity_head is not None:
        if num_classes is None:
            raise ConfigError("model.identity_head needs the number of training identities")
        grid_cells = backbone.grid_size**2
        identity_head = IDENTITY_HEADS.build(
            model_cfg.identity_head,
            "model.identity_head",
            embedding_dim=head.grid_channels * grid_cells,
            num_classes=num_classes,
        )
    return XCosModel(
        backbone,
        head,
        target,
        identity_head,
        model_cfg.cos,
        model_cfg.freeze_backbone,
        model_cfg.calibrate,
    )


def inference_config(model_cfg: Any) -> Any:
    """The model config for scoring with weights from an xcos checkpoint: no target network,
    no identity head, and no pretrained weights to find (the checkpoint holds them all)."""
    backbone = dict(model_cfg.backbone)
    if "weights" in backbone:
        backbone["weights"] = None
    return dataclasses.replace(
        model_cfg, backbone=backbone, target={"type": "self"}, identity_head=None, pretrained=None
    )


def build_and_load(
    model_cfg: Any,
    weights: str | Path | None = None,
    *,
    num_classes: int | None = None,
    inference: bool = False,
    device: torch.device | str | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> XCosModel:
    """Build the model of ``model_cfg`` (the ``model`` section of a ``Config``, like
    ``build_model``) and load ``weights`` (``-p``) into it, if given: the one way the Trainer,
    the Tester and the Verifier make a model.

    ``inference`` builds the model for scoring only (``inference_config``: no identity head,
    no target network); ``device`` moves it there before loading; ``state`` is the state dict
    already read from ``weights``. The weights load non-strictly: keys the file lacks or the
    model does not use are logged (a warning for missing keys at inference: those parts keep
    random weights); wrong shapes or no shared key raise ``CheckpointError``.
    """
    model = build_model(inference_config(model_cfg) if inference else model_cfg, num_classes)
    if device is not None:
        model = model.to(device)
    if weights is None:
        return model
    state = read_state_dict(weights, "-p") if state is None else state
    missing, unexpected = load_weights(model, state, f"-p {str(weights)!r}", strict=False)
    if not inference:
        log.info(
            "loaded weights %s: %d missing key(s) %s, %d unexpected key(s) %s",
            weights,
            len(missing),
            missing[:10],
            len(unexpected),
            unexpected[:10],
        )
        return model
    if missing:
        log.warning(
            "-p %s: %d parameter(s) not in the checkpoint: %s", weights, len(missing), missing[:10]
        )
    if unexpected:
        log.info(
            "-p %s: %d checkpoint key(s) unused in test mode: %s",
            weights,
            len(unexpected),
            unexpected[:10],
        )
    return model
