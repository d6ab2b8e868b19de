"""dlib's ResNet through our alignment (MTCNN -> dlib chip template) on one real LFW fold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import reference_kfold, require_dlib_weights, require_shared
from xcos.data.pair_set_specs import load_pair_set
from xcos.data.prepare import subset_folds
from xcos.evaluation.verification import kfold_accuracy

DLIB_ALIGNMENT = {
    "template": "dlib",
    "image_size": 150,
    "select": "central",
    "no_face": "center_crop",
}


@pytest.mark.slow
def test_dlib_resnet_through_our_alignment_on_lfw_fold_one():
    lfw = require_shared("data/lfw")
    require_dlib_weights()
    from xcos.data.align import FaceAligner
    from xcos.data.pack import read_pack
    from xcos.data.prepare import cached_pack
    from xcos.models.backbones.dlib_resnet import DlibResNet

    pairs = subset_folds(
        load_pair_set({"type": "lfw", "path": str(lfw / "pairs.txt"), "align": False}), [0]
    )
    folder = cached_pack(pairs, FaceAligner(**DLIB_ALIGNMENT), [lfw / "pairs.txt"])
    fold = read_pack(str(folder), "lfw_fold1")
    assert fold.images.shape[1:] == (3, 150, 150)
    model = DlibResNet(level=2, weights="auto").eval()
    embeddings = []
    with torch.no_grad():
        for start in range(0, len(fold.images), 64):
            chunk = torch.from_numpy(np.array(fold.images[start : start + 64]))
            embeddings.append(model(chunk.float().div(127.5).sub(1.0))["embedding"])
    unit = torch.nn.functional.normalize(torch.cat(embeddings), dim=1).numpy()
    cosine = (unit[fold.pairs[:, 0]] * unit[fold.pairs[:, 1]]).sum(axis=1)
    folds = np.arange(len(cosine)) * 10 // len(cosine)  # 10 contiguous folds of 60 pairs
    result = kfold_accuracy(cosine, fold.labels, folds)
    assert len(fold.labels) == 600
    accuracies, thresholds = reference_kfold(cosine, fold.labels, folds)  # by brute force
    assert result.fold_accuracies == pytest.approx(accuracies, abs=1e-12)
    assert result.accuracy == pytest.approx(np.mean(accuracies), abs=1e-12)
    assert result.fold_thresholds == pytest.approx(thresholds, abs=1e-12)
    assert result.accuracy >= 0.97, f"dlib cosine on LFW fold 1: {result.accuracy:.4f}"
