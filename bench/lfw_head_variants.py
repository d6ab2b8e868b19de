"""xCos head variants on a frozen recognizer, on chosen LFW View 2 folds (learned attention).

For each fold, a head is trained exactly as ``xcos lfw-protocol`` does (people of the other
nine sets, cached backbone outputs) with the config changed by ``--set`` overrides, and the
script prints, per fold, the accuracy of xCos and of the recognizer's cosine (thresholds from
the other nine folds) and the mean squared difference between the two scores on all 6,000 pairs.

    python bench/lfw_head_variants.py --lfw ../shared/data/lfw --folds 4 5 \
        --set model.head.grid_channels=128
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from xcos.config import load_config
from xcos.data.lfw import read_lfw
from xcos.data.lfw_people import LFWFaceStore
from xcos.engine.features import cached_backbone_outputs
from xcos.evaluation.verification import held_out_accuracy
from xcos.models.xcos_model import build_model
from xcos.recipes.lfw_protocol import HeadJob, lfw_people, score_pairs, train_heads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/xcos_dlib_lfw.json")
    parser.add_argument("--lfw", default="../shared/data/lfw")
    parser.add_argument("--folds", type=int, nargs="+", default=[4, 5])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    quiet = ["trainer.progress_bar=false", "trainer.tensorboard=false"]
    config = load_config(args.config, overrides=[*quiet, *args.overrides])
    lfw, cpu = Path(args.lfw), torch.device("cpu")
    store = LFWFaceStore(lfw / "images", config.data.train.get("align"), "data.train.align")
    model = build_model(config.model)
    outputs = cached_backbone_outputs(model, store.face, len(store), store.cache_key, cpu, False)
    view2 = read_lfw(str(lfw / "pairs.txt"))
    pairs = store.indices(list(view2.images), "pairs.txt")[view2.pairs]
    print(f"overrides: {args.overrides or 'none'}")
    with tempfile.TemporaryDirectory() as scratch:
        jobs = {
            (fold, "xcos"): HeadJob(
                config.raw,
                lfw_people(lfw, "people.txt", exclude=fold),
                {},
                Path(scratch) / f"fold{fold}",
            )
            for fold in args.folds
        }
        heads = train_heads(jobs, config, cpu)
        for fold in args.folds:
            scores = score_pairs(heads[fold, "xcos"], outputs, pairs, cpu, flip=False)
            test = view2.folds == fold - 1
            xcos, _ = held_out_accuracy(scores["xcos"], view2.labels, test)
            cos, _ = held_out_accuracy(scores["cos"], view2.labels, test)
            mse = float(np.mean((scores["xcos"] - scores["cos"]) ** 2))
            print(f"fold {fold}: xCos {xcos * 100:.2f}%, cos {cos * 100:.2f}%, MSE {mse:.2e}")


if __name__ == "__main__":
    main()
