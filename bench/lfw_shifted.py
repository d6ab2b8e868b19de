"""xCos against the recognizer's cosine on faces shifted away from the training data.

A head trained on colour LFW people (``configs/xcos_dlib_lfw.json``: View 1 ``peopleDevTrain``)
scores the identity-disjoint ``pairsDevTest`` as they are and shifted: grayscale (the three
channels set to the luminance, as a grayscale photo is read), lower contrast, and blurred.
For each, the 10-fold accuracy of xCos and of the cosine it explains, side by side on the same
faces, and the gap between them.

    python bench/lfw_shifted.py -p saved/dlib/checkpoints/best.pth \\
        --pairs ../shared/data/lfw/pairsDevTest.txt
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from xcos.evaluation.evaluator import score_pair_set
from xcos.evaluation.verification import kfold_accuracy
from xcos.explain.report import pair_set_for_model
from xcos.explain.verifier import Verifier


def grayscale(faces: np.ndarray) -> np.ndarray:
    """[M, 3, S, S] uint8 -> the luminance (ITU-R 601) in all three channels."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[None, :, None, None]
    luma = (faces.astype(np.float32) * weights).sum(axis=1, keepdims=True)
    return np.repeat(np.round(luma), 3, axis=1).astype(np.uint8)


def low_contrast(faces: np.ndarray) -> np.ndarray:
    """Half the contrast around mid-grey."""
    return np.round(127.5 + 0.5 * (faces.astype(np.float32) - 127.5)).astype(np.uint8)


def blurred(faces: np.ndarray) -> np.ndarray:
    """A 5x5 box blur (a softer, lower-resolution photo)."""
    tensor = torch.from_numpy(faces.astype(np.float32))
    soft = F.avg_pool2d(tensor, 5, 1, 2, count_include_pad=False)
    return soft.round().clamp(0, 255).byte().numpy()


SHIFTS = {
    "none": lambda faces: faces,
    "grayscale": grayscale,
    "low contrast": low_contrast,
    "blur 5x5": blurred,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-p", "--pretrained", required=True, help="an xcos checkpoint")
    parser.add_argument(
        "--pairs", required=True, help="an LFW pairs file (aligned through the cache)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    model = Verifier.from_checkpoint(args.pretrained, threshold=0.0, device="cpu").model
    pair_set = pair_set_for_model(args.pairs, model)
    faces = np.asarray(pair_set.images)
    print(f"model {args.pretrained}; {len(pair_set)} pairs of {pair_set.name}, 10-fold accuracy")
    print(f"{'shift':<14}{'xCos':>9}{'cos':>9}{'xCos - cos':>12}")
    for name, shift in SHIFTS.items():
        shifted = dataclasses.replace(pair_set, images=shift(faces))
        scores = score_pair_set(model, shifted, torch.device("cpu"))
        accuracy = {
            key: kfold_accuracy(scores[key], pair_set.labels, pair_set.folds).accuracy * 100
            for key in ("xcos", "cos")
        }
        gap = accuracy["xcos"] - accuracy["cos"]
        print(f"{name:<14}{accuracy['xcos']:>8.2f}%{accuracy['cos']:>8.2f}%{gap:>+11.2f}")


if __name__ == "__main__":
    main()
