"""Trainer overhead: our Trainer against a bare hand-written training loop on the same work.

Both loops train the same model (``build_model``), with the same losses, optimizers,
schedulers, autocast, GradScaler (fp16), gradient clipping, memory format and batch size, on
the same in-memory pairs through a DataLoader with ``num_workers=0``, so the difference is the
Trainer's own work per step: reading the loss terms back (finiteness check, logging), TensorBoard
scalars, its sampler and loader settings. The pairs are pre-decoded tensors (``MemoryPairs``,
registered as the dataset type ``bench_memory_pairs``), because JPEG decoding would otherwise
dominate a CPU measurement and hide the loop.

The Trainer keeps its default logging (TensorBoard on, into a temporary run folder); only its
progress bar is switched off (``trainer.progress_bar=false``): tqdm is off anyway when stderr is
not a terminal, and the measurement must not depend on where the output goes. Validation never
runs: each round calls ``train_epoch()``, never ``fit()``. The rounds alternate (Trainer, bare,
Trainer, bare, ...) after one warm-up round each; the medians are compared.

    python bench/trainer_overhead.py [--config configs/demo_synthetic.json] [--batch 16]
        [--steps 10] [--rounds 5] [--device cpu|cuda] [--classes 160] [--set key=value ...]

Overhead = 1 - (Trainer images/s) / (bare images/s); the target is at most 3%.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from timing import interleave, median
from torch import nn
from torch.utils.data import DataLoader, Dataset

from xcos.config import Config, load_config
from xcos.engine.optim import build_optimizers, build_schedulers
from xcos.engine.trainer import Trainer
from xcos.models.xcos_model import XCosModel, build_model
from xcos.registry import DATASETS, LOSSES
from xcos.runtime import autocast_factory

DATASET_TYPE = "bench_memory_pairs"


class MemoryPairs(Dataset):
    """Training pairs drawn from a small pool of random face-sized tensors held in memory.

    Items have the keys of the real pair datasets (``image_a``, ``image_b`` [3, S, S];
    ``identity_a``, ``identity_b``, ``label`` as 0-d tensors), so the Trainer cannot tell the
    difference; the images are views into the pool and the DataLoader's collation copies them,
    as it copies decoded images. A key is an index or an ``(epoch, index)`` pair, as the
    Trainer's sampler yields. Anchor ``index`` is pool image ``index % pool``; its partner is a
    hash of (seed, epoch, index).

    Args:
        pairs: items per epoch.
        num_classes: identities the identity head classifies (pool images cycle through them).
        pool: distinct images kept in memory (pixel values do not change the speed).
        image_size: side S of the square images.
        seed: seed of the pixels and of the partners.
    """

    def __init__(
        self,
        pairs: int = 256,
        num_classes: int = 160,
        pool: int = 64,
        image_size: int = 112,
        seed: int = 0,
    ) -> None:
        # A local generator leaves the global RNG alone, so the Trainer's model and the bare
        # loop's model get the same initial weights from the config's seed.
        generator = torch.Generator().manual_seed(seed)
        shape = (pool, 3, image_size, image_size)
        self.images = torch.randn(shape, generator=generator).clamp_(-1.0, 1.0)
        self.identities = torch.arange(pool) % num_classes
        self.num_classes, self.pairs, self.seed, self.epoch = num_classes, pairs, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch of plain index keys (partners change per epoch, like the real data)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.pairs

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        pool = len(self.images)
        a, b = index % pool, (index * 7919 + epoch * 104_729 + self.seed) % pool
        identity_a, identity_b = self.identities[a], self.identities[b]
        return {
            "image_a": self.images[a],
            "image_b": self.images[b],
            "identity_a": identity_a,
            "identity_b": identity_b,
            "label": (identity_a == identity_b).long(),
        }


if DATASET_TYPE not in DATASETS:  # the module may be loaded twice (script, then import)
    DATASETS.add(DATASET_TYPE, MemoryPairs)


def overhead_config(config: Config, steps: int) -> Config:
    """``config`` with in-memory training pairs for exactly ``steps`` batches, no workers, no
    validation and no progress bar.

    Exactly ``steps`` batches per epoch: a loader with more would make the Trainer collate one
    batch it then drops (it stops at ``max_steps_per_epoch`` only after fetching the next one).
    """
    train = dict(config.data.train or {})
    if train.get("type") != DATASET_TYPE:
        train = {"type": DATASET_TYPE}
    train["pairs"] = steps * config.data.batch_size
    train["image_size"] = config.model.backbone.get("input_size", 112)
    layer = {
        "data": {"train": train, "synthetic": None, "num_workers": 0},
        "trainer": {"max_steps_per_epoch": steps, "progress_bar": False},
        "validation": {"pair_sets": [], "monitor": None},
    }
    return load_config(config.raw, [layer])


@dataclasses.dataclass
class Recipe:
    """One training step as the config describes it, with nothing around it."""

    model: XCosModel
    forward: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]
    losses: list[nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, Any]
    scaler: torch.amp.GradScaler
    autocast: Callable[[], AbstractContextManager]
    memory_format: torch.memory_format
    grad_clip: float | None
    device: torch.device

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch on the device, images [B, 3, H, W] in the model's memory format."""
        moved = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        return {
            key: value.contiguous(memory_format=self.memory_format) if value.ndim == 4 else value
            for key, value in moved.items()
        }

    def step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Forward, summed losses, backward, (clip), update; returns the loss, never read
        here: reading it would wait for the device."""
        with self.autocast():
            outputs = self.forward(batch)
        total = sum(loss(outputs, batch) for loss in self.losses)
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.grad_clip is not None:
            for optimizer in self.optimizers.values():
                self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        for optimizer in self.optimizers.values():
            self.scaler.step(optimizer)
        self.scaler.update()
        for scheduler in self.schedulers.values():
            scheduler.step("step")
        return total


def build_recipe(
    config: Config, num_classes: int | None, device: torch.device, compile: bool | None = None
) -> Recipe:
    """The model, losses and optimizers of ``config``, built as the Trainer builds them.

    ``compile`` wraps the model in ``torch.compile``; ``None`` follows ``trainer.compile``
    when the config has that switch.
    """
    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes).to(device)
    memory_format = torch.channels_last if config.trainer.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    optimizers = build_optimizers(config.optimizers, model.parameter_groups())
    if compile is None:
        compile = bool(getattr(config.trainer, "compile", False))
    return Recipe(
        model=model,
        forward=torch.compile(model) if compile else model,
        losses=[LOSSES.build(c, f"losses.{i}") for i, c in enumerate(config.losses)],
        optimizers=optimizers,
        schedulers=build_schedulers(config.schedulers, optimizers),
        scaler=torch.amp.GradScaler(device.type, enabled=config.trainer.amp == "fp16"),
        autocast=autocast_factory(config.trainer.amp, device),
        memory_format=memory_format,
        grad_clip=config.trainer.grad_clip,
        device=device,
    )


def bare_round(
    recipe: Recipe, dataset: Dataset, batch_size: int, steps: int, pin_memory: bool | None = None
) -> int:
    """``steps`` training steps over a plain DataLoader; returns the steps done.

    ``pin_memory`` None pins on CUDA, as the Trainer does by default.
    """
    recipe.model.train()
    if pin_memory is None:
        pin_memory = recipe.device.type == "cuda"
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=0,
        pin_memory=pin_memory,
    )
    done = 0
    for batch in itertools.islice(loader, steps):  # islice: no batch fetched beyond `steps`
        recipe.step(recipe.to_device(batch))
        done += 1
    return done


def trainer_round(trainer: Trainer) -> int:
    """One ``train_epoch()`` from the start of the epoch; returns the steps done."""
    # The Trainer counts the samples done in the epoch so that a resumed run skips them; after
    # one round it would think the epoch finished. end_epoch() would reset the count but also
    # write two checkpoints per round, so it is reset here instead (and expect_steps catches
    # a Trainer that counts some other way).
    trainer.samples_in_epoch = 0
    before = trainer.step
    trainer.train_epoch()
    return trainer.step - before


def expect_steps(done: int, steps: int, loop: str) -> None:
    """A round that did fewer steps would make its loop look faster than it is."""
    if done != steps:
        raise RuntimeError(f"the {loop} did {done} steps in a round instead of {steps}")


def compare(config: Config, device: torch.device, steps: int, rounds: int) -> dict[str, Any]:
    """Trainer vs bare loop on ``config`` (batch ``data.batch_size`` pairs), interleaved.

    Returns ``batch_pairs``, ``steps``, ``rounds``, ``amp``, ``channels_last``,
    ``trainer_images_per_s``, ``bare_images_per_s``, ``trainer_round_s``, ``bare_round_s``
    (medians), ``ratio`` (Trainer images/s over bare images/s) and ``overhead`` (1 - ratio).
    """
    config = overhead_config(config, steps)
    batch = config.data.batch_size
    pin = getattr(config.data, "pin_memory", None)
    with tempfile.TemporaryDirectory(prefix="xcos-overhead-") as run_dir:
        trainer = Trainer(config, Path(run_dir), device)
        try:
            recipe = build_recipe(config, getattr(trainer.dataset, "num_classes", None), device)
            works = {
                "trainer": lambda: expect_steps(trainer_round(trainer), steps, "Trainer"),
                "bare": lambda: expect_steps(
                    bare_round(recipe, trainer.dataset, batch, steps, pin), steps, "bare loop"
                ),
            }
            times = interleave(works, device, rounds)
        finally:
            run_log = getattr(trainer, "run_log", None)
            if run_log is not None:
                run_log.close()  # TensorBoard's writer thread must stop before the folder goes
    images = 2 * batch * steps
    trainer_s, bare_s = median(times["trainer"]), median(times["bare"])
    return {
        "batch_pairs": batch,
        "steps": steps,
        "rounds": rounds,
        "amp": config.trainer.amp,
        "channels_last": config.trainer.channels_last,
        "trainer_images_per_s": images / trainer_s,
        "bare_images_per_s": images / bare_s,
        "trainer_round_s": trainer_s,
        "bare_round_s": bare_s,
        "ratio": bare_s / trainer_s,
        "overhead": 1.0 - bare_s / trainer_s,
    }


def format_result(result: dict[str, Any]) -> str:
    """The comparison as a small table and the ratio."""
    rows = [
        f"{'loop':<12} {'round s':>9} {'images/s':>10}",
        *(
            f"{name:<12} {result[key + '_round_s']:>9.3f} {result[key + '_images_per_s']:>10.1f}"
            for name, key in (("Trainer", "trainer"), ("bare loop", "bare"))
        ),
        f"Trainer / bare: {result['ratio']:.3f} (overhead {result['overhead'] * 100:.1f}%, "
        "target <= 3%)",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo_synthetic.json")
    parser.add_argument("--batch", type=int, help="pairs per step (default: data.batch_size)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--classes", type=int, default=160, help="identities of the pairs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = [*args.set, f"data.train.num_classes={args.classes}"]
    if args.batch is not None:
        overrides.append(f"data.batch_size={args.batch}")
    base = load_config(args.config, [{"data": {"train": {"type": DATASET_TYPE}}}], overrides)
    result = compare(base, torch.device(args.device), args.steps, args.rounds)
    print(
        f"{base.name}: {base.model.backbone}, batch {result['batch_pairs']} pairs, "
        f"{args.steps} steps per round, amp {result['amp']}, channels_last "
        f"{result['channels_last']}, {args.device}, {torch.get_num_threads()} threads, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(format_result(result))


if __name__ == "__main__":
    main()
