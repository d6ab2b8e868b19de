"""The batched MTCNN cascade finds what facenet-pytorch's own cascade finds, and its batched
area resampling equals PyTorch's, crop by crop."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import require_shared
from xcos.data.mtcnn import MTCNNDetector, area_crops, pyramid_scales, summed_area_tables


def test_area_crops_equal_interpolate_area_crop_by_crop():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (3, 3, 61, 47), generator=generator).float()
    owners = torch.tensor([0, 2, 2, 1, 0])
    top = np.array([0, 5, 10, 30, 1])
    bottom = np.array([61, 17, 13, 60, 50])
    left = np.array([0, 2, 20, 0, 7])
    right = np.array([47, 40, 23, 9, 8])  # from 47 px wide down to 1 px, upsampled too
    crops = area_crops(summed_area_tables(pixels), owners, (top, bottom, left, right), 24)
    for k in range(len(owners)):
        crop = pixels[owners[k], :, top[k] : bottom[k], left[k] : right[k]][None]
        expected = F.interpolate(crop, size=(24, 24), mode="area")[0]
        torch.testing.assert_close(crops[k], expected, rtol=0, atol=1e-4)


def test_pyramid_starts_at_the_smallest_face_and_stops_at_twelve_pixels():
    scales = pyramid_scales(250, 250, 40, 0.709)
    assert scales[0] == pytest.approx(12 / 40)
    assert 250 * scales[-1] >= 12 > 250 * scales[-1] * 0.709
    assert len(pyramid_scales(250, 250, 20, 0.709)) == len(scales) + 2


@pytest.mark.slow
def test_cascade_finds_facenet_pytorchs_faces_and_landmarks_on_lfw():
    from facenet_pytorch import MTCNN

    lfw = require_shared("data/lfw")
    paths = sorted((lfw / "images").glob("*/*.jpg"))[::400][:24]
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    boxes, scores, points = MTCNN(keep_all=True).detect(images, landmarks=True)
    found = MTCNNDetector().detect(images)
    for path, box, score, landmarks, mine in zip(paths, boxes, scores, points, found, strict=True):
        if box is None:
            assert len(mine) == 0, path
            continue
        order = np.argsort(-np.asarray(score, float), kind="stable")
        assert len(mine) == len(order), path
        np.testing.assert_allclose(mine.scores, np.asarray(score, float)[order], atol=1e-4)
        # the best face: same box and landmarks up to float noise
        np.testing.assert_allclose(mine.boxes[0], np.asarray(box, float)[order][0], atol=1e-2)
        np.testing.assert_allclose(
            mine.landmarks[0], np.asarray(landmarks, float)[order][0], atol=1e-2
        )


def test_an_image_smaller_than_the_smallest_face_has_no_faces():
    tiny = np.full((2, 40, 40, 3), 128, dtype=np.uint8)  # 40 px < 56 px: no pyramid scale at all
    assert pyramid_scales(40, 40, 56.1, 0.709) == []
    assert [len(found) for found in MTCNNDetector(min_face_size=56.1).detect(tiny)] == [0, 0]
