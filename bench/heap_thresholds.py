"""Training steps under glibc's sliding heap thresholds vs ``xcos.runtime.steady_heap``.

glibc trims the heap's top once more than twice the largest freed block is free; a training
step frees its activations at its end, the top is trimmed, and the next step maps and the
kernel zeroes the same pages again. ``steady_heap`` (called by every ``Trainer``) fixes the
thresholds instead. Heap settings belong to a process, so each way runs in child processes of
its own, in turn round by round; each child trains the LFW protocol's fold-1 head (learned
attention, ``configs/xcos_dlib_lfw.json`` + ``configs/explain/dlib_level1.json``, one thread,
as each of ``xcos lfw-protocol``'s workers) for ``--epochs`` epochs on real batches of LFW's
cached dlib outputs (92 steps each) and reports the wall time, minor page faults and system
time of its training (``Trainer.fit``). Needs real LFW (``--lfw``); a first run aligns it and
caches dlib's outputs (minutes).

    python bench/heap_thresholds.py [--lfw data/lfw] [--epochs 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG, LAYER = "configs/xcos_dlib_lfw.json", "configs/explain/dlib_level1.json"
WAYS = ("glibc", "steady")


def child(lfw: Path, way: str, epochs: int) -> dict[str, float]:
    """Train the fold-1 head ``epochs`` epochs in this process, the heap set ``way``."""
    import torch

    from xcos.config import load_config
    from xcos.engine import trainer as trainer_module
    from xcos.recipes.lfw_protocol import VARIANTS, HeadJob, job_raw, lfw_people

    torch.set_num_threads(1)
    if way == "glibc":  # leave glibc's own sliding thresholds in place
        trainer_module.steady_heap = lambda: None
    overrides = ["trainer.tensorboard=false", f"trainer.epochs={epochs}"]
    config = load_config(CONFIG, [LAYER], overrides=overrides)
    with tempfile.TemporaryDirectory() as folder:
        job = HeadJob(
            config.raw, lfw_people(lfw, "people.txt", exclude=1), VARIANTS["xcos"], Path(folder)
        )
        trainer = trainer_module.Trainer(
            load_config(job_raw(job, quiet=True)), Path(folder) / "head", torch.device("cpu")
        )
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        trainer.fit()
        wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {
        "steps": trainer.step,
        "wall_s": wall,
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "system_s": after.ru_stime - before.ru_stime,
    }


def run_child(lfw: Path, way: str, epochs: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--lfw", str(lfw), "--epochs", str(epochs), "--child", way]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lfw", type=Path, default=Path("data/lfw"))
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per child")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.lfw, args.child, args.epochs)))
        return
    results: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    for round_number in range(args.rounds):  # in turn, the order reversed every other round
        for way in WAYS if round_number % 2 == 0 else WAYS[::-1]:
            results[way].append(run_child(args.lfw, way, args.epochs))
    print(
        f"fold-1 protocol head (learned), {args.epochs} epochs per child process, "
        f"1 thread, median of {args.rounds} rounds"
    )
    print(f"{'heap':<8}{'wall s':>9}{'ms/step':>9}{'minor faults':>14}{'system s':>10}")
    medians = {
        way: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for way, runs in results.items()
    }
    for way, values in medians.items():
        print(
            f"{way:<8}{values['wall_s']:>9.2f}{values['wall_s'] / values['steps'] * 1e3:>9.1f}"
            f"{values['minor_faults']:>14,.0f}{values['system_s']:>10.2f}"
        )
    speed_up = medians["glibc"]["wall_s"] / medians["steady"]["wall_s"]
    print(f"steady / glibc: {speed_up:.2f}x faster")


if __name__ == "__main__":
    main()
