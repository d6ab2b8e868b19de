"""Run under torchrun by tests/data/test_rec_pairs.py: each rank reads its share of epoch 1 of a
RecordIO folder's pairs through one DataLoader worker and writes ``[record key, SHA-256 of the
anchor's bytes]`` of every anchor it read to ``<out>/rank<R>.json``.

    torchrun --standalone --nproc_per_node=2 -m tests.helpers.rec_ranks FOLDER OUT
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from torch.utils.data import DataLoader

from xcos.data.rec_pairs import RecPairs
from xcos.distributed import init_distributed, shutdown_distributed
from xcos.engine.data_loaders import EpochSampler


def main(folder: str, out: str) -> None:
    dist, _ = init_distributed("cpu")
    data = RecPairs(folder, decode="device")  # items keep the anchor's record key and bytes
    sampler = EpochSampler(len(data), 0, dist.rank, dist.world_size)
    sampler.set_epoch(1)
    loader = DataLoader(data, batch_size=8, sampler=sampler, num_workers=1, collate_fn=data.collate)
    read = [
        [key, hashlib.sha256(encoded.numpy().tobytes()).hexdigest()]
        for batch in loader
        for key, encoded in zip(batch["record_a"].tolist(), batch["encoded_a"], strict=True)
    ]
    (Path(out) / f"rank{dist.rank}.json").write_text(json.dumps(read))
    shutdown_distributed(wait=True)


if __name__ == "__main__":
    main(*sys.argv[1:3])
