"""dlib's ResNet on LFW View 2 through both aligners: MTCNN (the default) and dlib's own pipeline.

For each aligner, the 7,701 images of ``pairs.txt`` are aligned onto dlib's 150 x 150 chip
through the pack cache (as ``xcos prepare`` and test mode do; MTCNN with LFW's settings, as
``tests/evaluation/test_dlib_lfw.py``, ``configs/xcos_dlib_lfw.json`` and the 98.85% of
``doc/results.md`` use it: dlib template, central face, centred crop where no face is found),
embedded with the dlib port (``dlib_resnet``), and scored on the 10 official folds:

- cosine, threshold chosen on the other 9 folds (mean +- std over the folds), also on the
  pairs where both images had a face detected;
- Euclidean distance of the raw descriptors, 10-fold and at dlib's fixed threshold 0.6;
- alignment images/s (decode + detect + landmarks + chip, timed over all images when the pack
  was made; a sidecar under ``$XCOS_CACHE/bench`` keeps that figure and the names of the images
  without a face, so reruns are cheap and report what the full pass measured);
- the images in which no face was found (they get a centred crop).

Diagnostics for the gap to dlib's published figures (99.38% with jitter, 99.13% without, per
``dnn_face_recognition_ex.cpp``): ``--cnn-misses`` aligns the images dlib's HOG detector
missed with dlib's CNN detector instead and rescores; ``--jitters J`` averages the port's
descriptors over J ``dlib.jitter_image`` copies of each dlib chip (dlib's example uses 100);
``--dlib-decoder`` runs dlib's pipeline once more on the images as dlib's own loader
(``dlib.load_rgb_image``, its libjpeg) decodes them, as dlib's example does, where xcos decodes
with Pillow (the dlib aligner's ``decoder`` setting; a pack of its own in the cache).

    python bench/dlib_aligners.py [--lfw ../shared/data/lfw] [--threads 1] [--cnn-misses]
        [--jitters 10] [--dlib-decoder]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from xcos.cache import cache_root
from xcos.data.aligners import make_aligner
from xcos.data.lfw import read_lfw
from xcos.data.pack import read_pack
from xcos.data.pair_sets import PairSet
from xcos.data.prepare import cached_pack, subset_folds
from xcos.evaluation.verification import kfold_accuracy
from xcos.models.backbones.dlib_resnet import DlibResNet

#: Both aligners with LFW's choices (central face, centred crop when none is found).
SETTINGS = {
    "mtcnn": {"template": "dlib", "image_size": 150, "select": "central", "no_face": "center_crop"},
    "dlib": {"aligner": "dlib", "select": "central", "no_face": "center_crop"},
    # dlib's pipeline on images decoded by dlib's own loader, as its example reads them
    "dlib_decoded": {
        "aligner": "dlib",
        "select": "central",
        "no_face": "center_crop",
        "decoder": "dlib",
    },
}


class TimedAligner:
    """An aligner seen by ``cached_pack`` unchanged (same settings, so the same cache key)
    that also times its work and keeps the names of the images without a face."""

    def __init__(self, aligner) -> None:
        self.aligner, self.seconds, self.images, self.no_face = aligner, 0.0, 0, []

    @property
    def stats(self):
        return self.aligner.stats

    def settings(self) -> dict:
        return self.aligner.settings()

    def align_batch(self, paths):
        start = time.perf_counter()
        aligned = self.aligner.align_batch(paths)
        self.seconds += time.perf_counter() - start
        self.images += len(paths)
        self.no_face += [str(p) for p, face in zip(paths, aligned, strict=True) if face.fallback]
        return aligned

    def record(self) -> dict:
        return {
            "images": self.images,
            "seconds": self.seconds,
            "no_face": self.no_face,
            "measured": datetime.date.today().isoformat(),
            "machine": f"{platform.node()}, {torch.get_num_threads()} torch thread(s)",
        }


def aligner_named(name: str, extra: dict | None = None):
    """``SETTINGS[name]`` (plus ``extra``) as an aligner."""
    return make_aligner({**SETTINGS[name], **(extra or {})}, f"bench.{name}")


def aligned(pairs: PairSet, name: str, pairs_txt: Path) -> tuple[PairSet, dict, Path]:
    """The pack of ``pairs`` aligned by aligner ``name`` (from the cache when there) and the
    record of its full alignment pass (made now when the sidecar is missing)."""
    timed = TimedAligner(aligner_named(name))
    folder = cached_pack(pairs, timed, [pairs_txt])
    sidecar = cache_root() / "bench" / "dlib_aligners" / f"{folder.name}.json"
    if timed.images == 0 and not sidecar.is_file():  # pack cached by another run: time a pass
        for start in range(0, len(pairs.images), 32):
            timed.align_batch(list(pairs.images[start : start + 32]))
    if timed.images:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        sidecar.write_text(json.dumps(timed.record(), indent=1) + "\n")
    return read_pack(str(folder), f"lfw-{name}"), json.loads(sidecar.read_text()), folder


@torch.inference_mode()
def embed(model: DlibResNet, faces, batch: int = 64) -> np.ndarray:
    """Raw (not normalised) dlib descriptors [M, 128] of uint8 faces [M, 3, 150, 150]."""
    out = []
    for start in range(0, len(faces), batch):
        chunk = torch.from_numpy(np.array(faces[start : start + batch]))
        out.append(model(chunk.float().div(127.5).sub(1.0))["embedding"].double().numpy())
    return np.concatenate(out)


def jittered(model: DlibResNet, faces, jitters: int, per_forward: int = 6) -> np.ndarray:
    """dlib's jittered descriptor: the mean over ``jitters`` ``dlib.jitter_image`` copies."""
    import dlib

    out = []
    for start in range(0, len(faces), per_forward):
        copies = [
            np.stack(dlib.jitter_image(np.ascontiguousarray(face.transpose(1, 2, 0)), jitters))
            for face in np.asarray(faces[start : start + per_forward])
        ]
        stack = np.concatenate(copies).transpose(0, 3, 1, 2)
        out.append(embed(model, stack, len(stack)).reshape(len(copies), jitters, -1).mean(1))
    return np.concatenate(out)


def scores(descriptors: np.ndarray, pairs: PairSet, keep: np.ndarray | None = None) -> dict:
    """Cosine and Euclidean 10-fold accuracy (and at dlib's 0.6) on the pairs ``keep``."""
    keep = np.ones(len(pairs), bool) if keep is None else keep
    a, b = descriptors[pairs.pairs[keep, 0]], descriptors[pairs.pairs[keep, 1]]
    labels, folds = pairs.labels[keep], pairs.folds[keep]
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    distance = np.linalg.norm(a - b, axis=1)
    cos, euclid = kfold_accuracy(cosine, labels, folds), kfold_accuracy(-distance, labels, folds)
    return {
        "pairs": int(keep.sum()),
        "cosine": (cos.accuracy, cos.accuracy_std),
        "euclidean": (euclid.accuracy, euclid.accuracy_std),
        "euclidean_0.6": float(((distance < 0.6) == labels.astype(bool)).mean()),
    }


def line(label: str, result: dict) -> str:
    (cos, cos_std), (euc, euc_std) = result["cosine"], result["euclidean"]
    fixed = 100 * result["euclidean_0.6"]
    return (
        f"{label:<34} {result['pairs']:>5}  cosine {100 * cos:6.2f} +- {100 * cos_std:4.2f}  "
        f"euclid {100 * euc:6.2f} +- {100 * euc_std:4.2f}  @0.6 {fixed:6.2f}"
    )


def cnn_rescue(
    pairs: PairSet, record: dict, name: str = "dlib"
) -> tuple[dict[int, np.ndarray], list[str]]:
    """Chips [3, 150, 150] by image index of the HOG misses that dlib's CNN detector finds,
    and the images it misses too (``name``: the dlib aligner, decoding as it does)."""
    aligner = aligner_named(name, {"detector": "cnn"})
    index = {str(path): i for i, path in enumerate(pairs.images)}
    chips, missed = {}, []
    for path in record["no_face"]:
        face = aligner.align(path)
        if face.fallback:
            missed.append(path)
        else:
            chips[index[path]] = face.face.transpose(2, 0, 1)
    return chips, missed


def replaced(descriptors: np.ndarray, chips: dict[int, np.ndarray], describe) -> np.ndarray:
    """``descriptors`` with those of ``chips`` (by image index) computed by ``describe``."""
    out = descriptors.copy()
    if chips:
        out[list(chips)] = describe(np.stack(list(chips.values())))
    return out


def report(name: str, pairs: PairSet, record: dict, descriptors: np.ndarray) -> dict:
    rate = record["images"] / record["seconds"]
    misses = record["no_face"]
    index = {str(path): i for i, path in enumerate(pairs.images)}
    detected = np.ones(len(pairs.images), bool)
    detected[[index[path] for path in misses]] = False
    both = detected[pairs.pairs].all(axis=1)
    print(
        f"\n[{name}] {record['images']} images aligned at {rate:.1f} images/s "
        f"({record['seconds']:.0f} s, {record['measured']}, {record['machine']}); "
        f"no face found in {len(misses)} (centred crop instead)"
    )
    for path in misses:
        print(f"  no face: {'/'.join(Path(path).parts[-2:])}")
    full, detected_only = scores(descriptors, pairs), scores(descriptors, pairs, both)
    print(line(f"{name}: all pairs", full))
    print(line(f"{name}: pairs with both faces found", detected_only))
    return {"images_per_s": rate, "no_face": misses, "all": full, "both_found": detected_only}


def decoded_by_dlib(pairs: PairSet, lfw: Path, model: DlibResNet, cnn_misses: bool) -> dict:
    """dlib's pipeline on images decoded by dlib's loader: the same figures as for "dlib"."""
    pack, record, folder = aligned(pairs, "dlib_decoded", lfw / "pairs.txt")
    descriptors = embed(model, pack.images)
    result = report("dlib, dlib's decoder", pairs, record, descriptors) | {"pack": str(folder)}
    if cnn_misses and record["no_face"]:
        chips, missed = cnn_rescue(pairs, record, "dlib_decoded")
        rescued = replaced(descriptors, chips, lambda faces: embed(model, faces))
        result["cnn_on_misses"] = {"all": scores(rescued, pairs), "cnn_missed": missed}
        print(line("dlib's decoder, CNN on misses", result["cnn_on_misses"]["all"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lfw",
        default=str(Path(__file__).parents[1].parent / "shared/data/lfw"),
        help="LFW folder with pairs.txt and images/ (default: ../shared/data/lfw)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--cnn-misses", action="store_true", help="CNN detector on HOG misses")
    parser.add_argument("--jitters", type=int, default=0, help="jittered copies per dlib chip")
    parser.add_argument(
        "--dlib-decoder", action="store_true", help="dlib's pipeline also on dlib-decoded images"
    )
    parser.add_argument("--folds", type=int, nargs="+", help="only these folds (0-based)")
    parser.add_argument("--json", help="write every figure here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lfw = Path(args.lfw)
    pairs = read_lfw(str(lfw / "pairs.txt"), str(lfw / "images"))
    if args.folds:  # a quick look on fewer folds (k-fold over the folds kept)
        pairs = subset_folds(pairs, args.folds)
    model = DlibResNet(level=2, weights="auto").eval()
    print(
        f"LFW View 2: {len(pairs)} pairs, {len(pairs.images)} images, "
        f"{len(np.unique(pairs.folds))} folds; dlib port, {args.threads} torch thread(s)"
    )
    results, descriptors, packs, records = {}, {}, {}, {}
    for name in ("mtcnn", "dlib"):
        packs[name], records[name], folder = aligned(pairs, name, lfw / "pairs.txt")
        descriptors[name] = embed(model, packs[name].images)
        results[name] = report(name, pairs, records[name], descriptors[name])
        results[name]["pack"] = str(folder)
    misses, chips = records["dlib"]["no_face"], {}
    if args.cnn_misses and misses:
        chips, missed = cnn_rescue(pairs, records["dlib"])
        rescued = replaced(descriptors["dlib"], chips, lambda faces: embed(model, faces))
        results["dlib_cnn_on_misses"] = {"all": scores(rescued, pairs), "cnn_missed": missed}
        print(f"\n[dlib, its CNN detector on the {len(misses)} images HOG found no face in]")
        print(f"  the CNN detector found none either in {len(missed)}: {missed}")
        print(line("dlib HOG, CNN on HOG's misses", results["dlib_cnn_on_misses"]["all"]))
    if args.jitters:
        start = time.perf_counter()
        mean = jittered(model, packs["dlib"].images, args.jitters)
        results["dlib_jittered"] = {"jitters": args.jitters, "all": scores(mean, pairs)}
        print(f"\n[dlib chips, {args.jitters} jitters each, {time.perf_counter() - start:.0f} s]")
        print(line(f"dlib, jitter x{args.jitters}", results["dlib_jittered"]["all"]))
        if chips:
            both = replaced(mean, chips, lambda faces: jittered(model, faces, args.jitters))
            results["dlib_cnn_on_misses_jittered"] = {"all": scores(both, pairs)}
            label = f"dlib, CNN on misses, jitter x{args.jitters}"
            print(line(label, results["dlib_cnn_on_misses_jittered"]["all"]))
    if args.dlib_decoder:
        results["dlib_decoded"] = decoded_by_dlib(pairs, lfw, model, args.cnn_misses)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
