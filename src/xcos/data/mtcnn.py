"""MTCNN (Zhang et al. 2016): the three-stage detection cascade, run in batches.

The networks and their weights are facenet-pytorch's (MIT, shipped in its wheel), and so are
the box helpers (candidate boxes, regression, squaring, clipping, the "Min" NMS). The cascade
follows ``facenet_pytorch.models.utils.detect_face`` step for step, so that it finds the same
boxes and landmarks, with changes that only make it faster on a CPU:

- all crops of a stage are resampled together from each image's summed-area table, instead of
  one ``F.interpolate(mode="area")`` call per crop (a 250 x 250 LFW photo sends 40-70 crops to
  the R- and O-Net stages; the per-call overhead dominated);
- the networks run channels-last, which halves their time on a CPU (max pooling above all);
- boxes that fall wholly outside the image are dropped before cropping (facenet-pytorch skips
  their crop but keeps the box, which misaligns the two lists).

The image pyramid is the original's: scales ``12 / min_face_size * factor**k`` while the
shorter side stays >= 12 pixels. Its largest scales look for the smallest faces and cost the
most; ``min_face_size`` is the setting that drops them (LFW's faces are 80-150 px wide in its
250 x 250 photos, see ``xcos.data.lfw``'s alignment settings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

from xcos.errors import SetupError

__all__ = ["Detections", "MTCNNDetector", "area_crops", "pyramid_scales", "summed_area_tables"]


class Detections:
    """Faces found in one image, best score first.

    ``boxes`` [N, 4] (x1, y1, x2, y2), ``scores`` [N], ``landmarks`` [N, 5, 2] (x, y).
    """

    def __init__(self, boxes: np.ndarray, scores: np.ndarray, landmarks: np.ndarray) -> None:
        order = np.argsort(-scores, kind="stable")
        self.boxes, self.scores, self.landmarks = boxes[order], scores[order], landmarks[order]

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2)))


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """The image pyramid's scales: the first maps ``min_face_size`` onto P-Net's 12 pixels."""
    scale = 12.0 / min_face_size
    shorter = min(height, width) * scale
    scales = []
    while shorter >= 12:
        scales.append(scale)
        scale *= factor
        shorter *= factor
    return scales


def _facenet() -> tuple[type, type, type, object]:
    try:
        from facenet_pytorch.models import mtcnn as networks
        from facenet_pytorch.models.utils import detect_face as helpers
    except ImportError as err:
        raise SetupError(
            "face detection needs facenet-pytorch (MTCNN and its weights), installed WITHOUT its "
            "dependencies, whose pins would downgrade torch/numpy/pillow: python -m pip install "
            f"--no-deps 'facenet-pytorch>=2.5' (`make install` does this). Import failed: {err}"
        ) from err
    return networks.PNet, networks.RNet, networks.ONet, helpers


@dataclass
class _Candidates:
    """Boxes [N, 5+] (x1, y1, x2, y2, score, ...) and the image each belongs to."""

    boxes: torch.Tensor
    images: torch.Tensor

    def take(self, index: torch.Tensor) -> _Candidates:
        return _Candidates(self.boxes[index], self.images[index])


class MTCNNDetector:
    """MTCNN's P-, R- and O-Net cascade: every face of every image, with its five landmarks.

    Args:
        min_face_size: smallest face searched for, in pixels of the images given. It sets the
            largest (and costliest) scale of the image pyramid.
        thresholds: score thresholds of the three stages.
        pyramid_factor: ratio between successive scales of the image pyramid.
        device: torch device of the networks.
    """

    def __init__(
        self,
        min_face_size: float = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.7),
        pyramid_factor: float = 0.709,
        device: str | torch.device = "cpu",
    ) -> None:
        if len(thresholds) != 3:
            raise ValueError(f"thresholds: expected 3 values (P, R, O net), got {thresholds!r}")
        if not 0 < pyramid_factor < 1:
            raise ValueError(f"pyramid_factor: expected a value in (0, 1), got {pyramid_factor}")
        if min_face_size < 12:
            raise ValueError(f"min_face_size: expected at least 12 pixels, got {min_face_size}")
        pnet, rnet, onet, self._helpers = _facenet()
        self.device = torch.device(device)
        # channels-last halves the networks' time on a CPU (the pooling kernels above all)
        self.pnet, self.rnet, self.onet = (
            net(pretrained=True).eval().to(self.device, memory_format=torch.channels_last)
            for net in (pnet, rnet, onet)
        )
        self.min_face_size = min_face_size
        self.thresholds = tuple(float(t) for t in thresholds)
        self.pyramid_factor = pyramid_factor

    @torch.inference_mode()
    def detect(self, images: np.ndarray) -> list[Detections]:
        """Faces in equal-size RGB uint8 images [B, H, W, 3] (or one [H, W, 3]), one
        ``Detections`` per image."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"expected RGB uint8 images [B, H, W, 3], got {images.dtype} {images.shape}"
            )
        batch = torch.as_tensor(np.ascontiguousarray(images), device=self.device)
        pixels = batch.permute(0, 3, 1, 2).float()
        tables = summed_area_tables(pixels)  # once: both crop stages read it
        found = self._propose(pixels)
        if len(found.boxes):
            found = self._refine(tables, found)
        landmarks = torch.zeros(0, 5, 2)
        if len(found.boxes):
            found, landmarks = self._output(tables, found)
        return self._per_image(found, landmarks, len(images))

    def _propose(self, pixels: torch.Tensor) -> _Candidates:
        """P-Net over the pyramid: candidates, NMS per scale, then over all scales."""
        height, width = pixels.shape[2:]
        boxes, images = [], []
        for scale in pyramid_scales(height, width, self.min_face_size, self.pyramid_factor):
            size = (int(height * scale + 1), int(width * scale + 1))
            data = (F.interpolate(pixels, size=size, mode="area") - 127.5) * 0.0078125
            data = data.contiguous(memory_format=torch.channels_last)
            regression, probs = self.pnet(data)
            found, owners = self._helpers.generateBoundingBox(
                regression, probs[:, 1], scale, self.thresholds[0]
            )
            keep = batched_nms(found[:, :4], found[:, 4], owners, 0.5)
            boxes.append(found[keep])
            images.append(owners[keep])
        if not boxes:  # the image is smaller than the smallest face searched for
            return _Candidates(
                torch.zeros(0, 9, device=pixels.device), torch.zeros(0, dtype=torch.long)
            )
        found = _Candidates(torch.cat(boxes), torch.cat(images))
        found = found.take(batched_nms(found.boxes[:, :4], found.boxes[:, 4], found.images, 0.7))
        box = found.boxes
        width_b, height_b = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        corrected = torch.stack(
            [
                box[:, 0] + box[:, 5] * width_b,
                box[:, 1] + box[:, 6] * height_b,
                box[:, 2] + box[:, 7] * width_b,
                box[:, 3] + box[:, 8] * height_b,
                box[:, 4],
            ],
            dim=1,
        )
        return _Candidates(self._helpers.rerec(corrected), found.images)

    def _refine(self, tables: torch.Tensor, found: _Candidates) -> _Candidates:
        """R-Net on 24 x 24 crops: threshold, NMS, box regression."""
        found, crops = self._crops(tables, found, 24)
        regression, probs = _in_padded_batches(self.rnet, crops)
        found, regression = self._passing(found, probs[:, 1], regression, self.thresholds[1])
        keep = batched_nms(found.boxes[:, :4], found.boxes[:, 4], found.images, 0.7)
        found, regression = found.take(keep), regression[keep]
        boxes = self._helpers.bbreg(found.boxes, regression)
        return _Candidates(self._helpers.rerec(boxes), found.images)

    def _output(self, tables: torch.Tensor, found: _Candidates) -> tuple[_Candidates, torch.Tensor]:
        """O-Net on 48 x 48 crops: threshold, landmarks, box regression, "Min" NMS."""
        found, crops = self._crops(tables, found, 48)
        regression, points, probs = _in_padded_batches(self.onet, crops)
        passing = probs[:, 1] > self.thresholds[2]
        points = points[passing]
        found, regression = self._passing(found, probs[:, 1], regression, self.thresholds[2])
        box = found.boxes
        box_w, box_h = box[:, 2] - box[:, 0] + 1, box[:, 3] - box[:, 1] + 1
        landmarks = torch.stack(
            [
                box_w[:, None] * points[:, :5] + box[:, 0, None] - 1,
                box_h[:, None] * points[:, 5:10] + box[:, 1, None] - 1,
            ],
            dim=2,
        )
        boxes = self._helpers.bbreg(box, regression)
        keep = self._helpers.batched_nms_numpy(boxes[:, :4], boxes[:, 4], found.images, 0.7, "Min")
        return _Candidates(boxes, found.images).take(keep), landmarks[keep]

    @staticmethod
    def _passing(
        found: _Candidates, scores: torch.Tensor, regression: torch.Tensor, threshold: float
    ) -> tuple[_Candidates, torch.Tensor]:
        passing = scores > threshold
        boxes = torch.cat([found.boxes[passing, :4], scores[passing, None]], dim=1)
        return _Candidates(boxes, found.images[passing]), regression[passing]

    def _crops(
        self, tables: torch.Tensor, found: _Candidates, side: int
    ) -> tuple[_Candidates, torch.Tensor]:
        """Each box's part inside the image, resized to ``side`` (area), normalised; boxes
        wholly outside the image are dropped. ``tables``: the images' summed-area tables."""
        height, width = tables.shape[2] - 1, tables.shape[3] - 1
        y, y_end, x, x_end = self._helpers.pad(found.boxes, width, height)
        inside = np.flatnonzero((y_end > y - 1) & (x_end > x - 1))
        found = found.take(torch.as_tensor(inside, dtype=torch.long, device=tables.device))
        y, y_end, x, x_end = y[inside], y_end[inside], x[inside], x_end[inside]
        crops = area_crops(tables, found.images, (y - 1, y_end, x - 1, x_end), side)
        crops = ((crops - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last)
        return found, crops

    @staticmethod
    def _per_image(found: _Candidates, landmarks: torch.Tensor, count: int) -> list[Detections]:
        boxes = found.boxes.cpu().numpy().astype(float)
        points = landmarks.cpu().numpy().astype(float)
        owners = found.images.cpu().numpy()
        results = []
        for index in range(count):
            mine = owners == index
            if not mine.any():
                results.append(Detections.empty())
                continue
            results.append(Detections(boxes[mine, :4], boxes[mine, 4], points[mine]))
        return results


def summed_area_tables(pixels: torch.Tensor) -> torch.Tensor:
    """[B, C, H + 1, W + 1] float64: entry (y, x) sums ``pixels[..., :y, :x]``. Over pixels
    that hold integers (0-255), float64 sums are exact."""
    table = torch.zeros(
        *pixels.shape[:2], pixels.shape[2] + 1, pixels.shape[3] + 1, dtype=torch.float64
    )
    torch.cumsum(pixels.contiguous().double(), 2, out=table[:, :, 1:, 1:])
    table[:, :, 1:, 1:] = table[:, :, 1:, 1:].cumsum(3)
    return table


def area_crops(
    tables: torch.Tensor,
    owners: torch.Tensor,
    bounds: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    side: int,
) -> torch.Tensor:
    """``F.interpolate(crop, (side, side), mode="area")`` of many crops at once.

    Area resampling averages, for output cell ``i``, input rows ``floor(i * h / side)`` to
    ``ceil((i + 1) * h / side)`` (and the same for columns): PyTorch's adaptive average pooling.
    Here the images' summed-area tables answer every cell of every crop with four lookups.

    Args:
        tables: [B, C, H + 1, W + 1] ``summed_area_tables`` of the images.
        owners: [N] the image of each crop.
        bounds: (top, bottom, left, right) [N] each, slice bounds (bottom/right excluded).
    """
    top, bottom, left, right = (torch.as_tensor(b, dtype=torch.long) for b in bounds)
    cells = torch.arange(side)
    channels = tables.shape[1]
    out = torch.empty(len(top), channels, side, side, device=tables.device)
    for image in torch.unique(owners).tolist():
        members = torch.nonzero(owners.cpu() == image).flatten()
        rows_0, rows_1 = _cell_edges(top[members], bottom[members], cells, side)
        cols_0, cols_1 = _cell_edges(left[members], right[members], cells, side)
        total = _box_sums(tables[image], rows_0, rows_1, cols_0, cols_1)
        count = (rows_1 - rows_0)[:, :, None] * (cols_1 - cols_0)[:, None, :]
        out[members.to(out.device)] = (total / count).permute(1, 0, 2, 3).float()
    return out


def _cell_edges(
    start: torch.Tensor, stop: torch.Tensor, cells: torch.Tensor, side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """First and one-past-last input index of each output cell, [M, side] each."""
    length = (stop - start)[:, None]
    first = start[:, None] + torch.div(cells * length, side, rounding_mode="floor")
    last = start[:, None] + torch.div((cells + 1) * length + side - 1, side, rounding_mode="floor")
    return first, last


def _box_sums(
    table: torch.Tensor,
    rows_0: torch.Tensor,
    rows_1: torch.Tensor,
    cols_0: torch.Tensor,
    cols_1: torch.Tensor,
) -> torch.Tensor:
    """Sums over rows [rows_0, rows_1) x cols [cols_0, cols_1) from one image's summed-area
    table [C, H + 1, W + 1]; rows/cols [M, side] -> [C, M, side, side]."""

    def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return table[:, rows[:, :, None], cols[:, None, :]]

    return (
        corner(rows_1, cols_1)
        - corner(rows_0, cols_1)
        - corner(rows_1, cols_0)
        + corner(rows_0, cols_0)
    )


#: Crops per network call are padded up to a multiple of this: the networks then see few
#: distinct batch sizes, and oneDNN keeps few kernels and buffers (one per shape) alive.
CROP_BATCH = 128


def _in_padded_batches(net: torch.nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``net(crops)``, the batch padded with zero crops to a multiple of ``CROP_BATCH``."""
    count = len(crops)
    padded = -count % CROP_BATCH
    if padded:
        filler = crops.new_zeros((padded, *crops.shape[1:]))
        crops = torch.cat([crops, filler]).contiguous(memory_format=torch.channels_last)
    return tuple(output[:count] for output in net(crops))
