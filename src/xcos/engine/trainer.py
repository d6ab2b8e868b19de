"""The training loop. It sums the loss terms it is given and knows nothing about faces."""

from __future__ import annotations

import itertools
import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from xcos.checkpoints import load_weights, state_dict_of
from xcos.config import Config
from xcos.data.image_folder import IdentityPairs
from xcos.data.pair_set_specs import load_pair_set
from xcos.distributed import Distributed
from xcos.engine.data_loaders import EpochSampler, build_train_loader
from xcos.engine.effect_targets import with_effect_targets
from xcos.engine.features import cached_backbone_outputs, with_cached_features
from xcos.engine.optim import build_optimizers, build_schedulers
from xcos.engine.run_checkpoint import (
    read_run_checkpoint,
    run_checkpoint_path,
    write_run_checkpoint,
)
from xcos.engine.run_log import RunLog
from xcos.errors import ConfigError, NonFiniteLossError
from xcos.evaluation.evaluator import evaluate_pair_set
from xcos.models.xcos_model import XCosModel, build_and_load
from xcos.registry import DATASETS, LOSSES
from xcos.runtime import (
    autocast_factory,
    release_free_memory,
    rng_states,
    seed_everything,
    set_rng_states,
    steady_heap,
)

log = logging.getLogger(__name__)


class Trainer:
    """Trains an xCos model from a ``Config`` into ``run_dir``.

    Under torchrun (``dist`` from ``xcos.distributed.init_distributed``) the model is
    wrapped in DistributedDataParallel, each process reads its share of every epoch, the loss
    terms are averaged over the processes, validation is sharded, and only rank 0 writes logs
    and checkpoints.

    Args:
        config: the validated run config.
        run_dir: output folder (checkpoints/, tensorboard/, log.txt, metrics.csv).
        device: where to train (this process's device).
        resume: a ``last.pth`` to continue exactly from (``-r``); it may come from a run with
            another number of processes.
        weights: weights to start from, loaded non-strictly (``-p``).
        dist: this process's place in a distributed job (default: a single process).
    """

    def __init__(
        self,
        config: Config,
        run_dir: Path,
        device: torch.device,
        resume: str | Path | None = None,
        weights: str | Path | None = None,
        dist: Distributed | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.device = config, Path(run_dir), device
        self.dist = dist or Distributed()
        steady_heap()  # each step's activations reused, not mapped and zeroed afresh
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        seed_everything(config.seed, config.trainer.deterministic)
        if device.type == "cuda" and not config.trainer.deterministic:
            # input sizes never change during training: let cuDNN pick the fastest kernels
            torch.backends.cudnn.benchmark = True
        self.autocast = autocast_factory(config.trainer.amp, device)
        self._require_training_sections()
        self.dataset = DATASETS.build(config.data.train, "data.train")
        if config.data.perturb is not None:
            if not isinstance(self.dataset, IdentityPairs):
                raise ConfigError(
                    f"data.perturb: {type(self.dataset).__name__} is not an identity-pair data "
                    "set; remove data.perturb"
                )
            self.dataset.perturb = config.data.perturb
        self.memory_format = (
            torch.channels_last if config.trainer.channels_last else torch.contiguous_format
        )
        self.model = self._build_model(getattr(self.dataset, "num_classes", None), weights)
        state = read_run_checkpoint(resume) if resume is not None else None
        if state is not None:  # before any cache is built from the backbone's outputs
            weights = state_dict_of(state, resume, "-r: checkpoint")
            load_weights(self.model, weights, f"-r: checkpoint {str(resume)!r}")
        cache = config.model.freeze_backbone and config.data.cache_features
        if cache and getattr(self.model.target, "needs_images", False):
            raise ConfigError(
                "data.cache_features: batches of cached backbone outputs hold no images, but "
                f"model.target {config.model.target.get('type')!r} reads them; set "
                "data.cache_features to false (or use the 'self' target)"
            )
        if config.data.effects is not None and not cache:
            raise ConfigError(
                "data.effects: the measured pairs carry cached backbone outputs; set "
                "model.freeze_backbone and data.cache_features to true"
            )
        # The validation sets before the training data's caches: aligning a set's faces
        # (MTCNN's threads and buffers, handed back when it ends) then runs while little else
        # is held, not on top of the training set's backbone outputs and measured effects
        # (a first run's peaks per stage: doc/performance.md).
        with self.dist.main_first():  # LFW files are aligned into a cache on first use
            self._load_validation(cache)
        if cache:
            with self.dist.main_first():  # rank 0 first: keyed faces are cached on disk for all
                self.dataset = with_cached_features(
                    self.model, self.dataset, device, config.validation.batch_size
                )
                release_free_memory()
                if config.data.effects is not None:
                    self.dataset = with_effect_targets(
                        self.model, self.dataset, config.data.effects, device
                    )
                    release_free_memory()  # the measuring passes' buffers, before training
        self.losses = [LOSSES.build(c, f"losses.{i}") for i, c in enumerate(config.losses)]
        if config.model.calibrate and any(loss.output == "xcos" for loss in self.losses):
            raise ConfigError(
                "losses: with model.calibrate, xcos is the recognizer's own cosine and teaches "
                "the head nothing; train the head's own score, output 'head_xcos'"
            )
        self.optimizers = build_optimizers(config.optimizers, self.model.parameter_groups())
        self.schedulers = build_schedulers(config.schedulers, self.optimizers)
        use_scaler = config.trainer.amp == "fp16"
        self.scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
        self.sampler = EpochSampler(
            len(self.dataset), config.seed, self.dist.rank, self.dist.world_size
        )
        self.train_loader: DataLoader | None = None
        self.epoch, self.step, self.samples_in_epoch = 0, 0, 0
        self.best: float | None = None
        self.threshold: float | None = None  # xCos threshold of the monitored validation set
        if state is not None:
            self._restore(state)
        self.net = self._wrap(self.model)  # what training steps call: DDP and/or compiled
        self.run_log = RunLog(self.run_dir, config.trainer, resume is not None, self.dist.is_main)

    # ------------------------------------------------------------------ setup helpers

    def _require_training_sections(self) -> None:
        for key, value in (
            ("data.train", self.cfg.data.train),
            ("losses", self.cfg.losses),
            ("optimizers", self.cfg.optimizers),
        ):
            if not value:
                raise ConfigError(f"{key}: required for training")

    def _build_model(self, num_classes: int | None, weights: str | Path | None) -> XCosModel:
        model = build_and_load(self.cfg.model, weights, num_classes=num_classes, device=self.device)
        model.to(memory_format=self.memory_format)
        if self.cfg.trainer.sync_batchnorm and self.dist.enabled:
            if self.device.type != "cuda":
                raise ConfigError(
                    "trainer.sync_batchnorm: torch's SyncBatchNorm runs on CUDA only; set it "
                    "to false for a CPU (gloo) run"
                )
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def _load_validation(self, cached: bool) -> None:
        """The validation pair sets (and, with a frozen backbone, its cached outputs)."""
        self.pair_sets = [
            load_pair_set(spec, f"validation.pair_sets.{i}")
            for i, spec in enumerate(self.cfg.validation.pair_sets)
        ]
        for pair_set in self.pair_sets:  # refuse unaligned faces now, not after an epoch
            pair_set.check_image_size(self.model.input_size, self.model.face_template)
        self._check_monitor()
        self.validation_outputs: dict[str, dict[str, torch.Tensor]] = {}
        if cached:
            self.validation_outputs = {p.name: self._cached_outputs(p) for p in self.pair_sets}
            for pair_set in self.pair_sets:  # validation reads the cached outputs from now on
                pair_set.release_face_pages()

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        net: torch.nn.Module = model
        if self.dist.enabled:
            net = DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.cfg.trainer.find_unused_parameters,
            )
        if self.cfg.trainer.compile:
            net = torch.compile(net)
        return net

    def _cached_outputs(self, pair_set) -> dict[str, torch.Tensor]:
        return cached_backbone_outputs(
            self.model,
            pair_set.image_reader(self.model.input_size),
            len(pair_set.images),
            pair_set.content_key(),
            self.device,
            flip=self.cfg.validation.flip,
            batch_size=self.cfg.validation.batch_size,
        )

    def _check_monitor(self) -> None:
        monitor = self.cfg.validation.monitor
        names = [p.name for p in self.pair_sets]
        if monitor is not None and monitor.pair_set not in names:
            raise ConfigError(
                f"validation.monitor.pair_set: {monitor.pair_set!r} is not among the validation "
                f"pair sets ({', '.join(names) or 'none'})"
            )

    @property
    def global_batch(self) -> int:
        return self.cfg.data.batch_size * self.dist.world_size

    @property
    def batch_in_epoch(self) -> int:
        """Steps of this epoch done so far (with this run's global batch, after a resume)."""
        return self.samples_in_epoch // self.global_batch

    def epoch_loader(self) -> DataLoader:
        """The training DataLoader, made once (its workers can persist across epochs); the
        sampler is told the epoch and how many samples a resumed epoch already saw."""
        self.sampler.set_epoch(self.epoch, self.samples_in_epoch)
        if self.train_loader is None:
            self.train_loader = build_train_loader(
                self.dataset, self.sampler, self.cfg.data, self.device, self.cfg.seed
            )
        return self.train_loader

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "rng": rng_states(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "samples_in_epoch": self.samples_in_epoch,  # over all processes
            "world_size": self.dist.world_size,
            "best": self.best,
            "threshold": self.threshold,
            "config": self.cfg.raw,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        """Everything but the model's weights, which the constructor loaded first."""
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        for name, scheduler in self.schedulers.items():
            scheduler.load_state_dict(state["schedulers"][name])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_states(state["rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best, self.threshold = state.get("best"), state.get("threshold")
        saved_world = state.get("world_size", 1)
        self.samples_in_epoch = state.get(
            "samples_in_epoch", state.get("batch_in_epoch", 0) * self.cfg.data.batch_size
        )
        log.info("resumed at epoch %d, step %d", self.epoch + 1, self.step)
        if saved_world != self.dist.world_size:
            log.warning(
                "the checkpoint was written by %d process(es), this run has %d: the global "
                "batch is now %d pairs (learning rates are unchanged)",
                saved_world,
                self.dist.world_size,
                self.global_batch,
            )

    def _save(self, name: str) -> None:
        if self.dist.is_main:  # the processes hold the same state: one writer
            write_run_checkpoint(self.state_dict(), self.run_dir, name)

    # ------------------------------------------------------------------ loop

    def fit(self) -> dict[str, Any]:
        """Train until ``trainer.epochs``; returns the last validation metrics."""
        metrics: dict[str, Any] = {}
        try:
            while self.epoch < self.cfg.trainer.epochs:
                losses = self.train_epoch()
                metrics = self.end_epoch(losses)
        finally:
            self.run_log.close()
        return metrics

    def train_epoch(self) -> dict[str, float]:
        """Train one epoch (or up to ``trainer.max_steps_per_epoch`` steps of it); returns the
        mean loss terms over the steps run (averaged over the processes)."""
        self.model.train()
        self.dataset.set_epoch(self.epoch)
        loader = self.epoch_loader()
        limit = self.cfg.trainer.max_steps_per_epoch
        total = self.batch_in_epoch + len(loader)  # the loader skips batches already done
        if limit is not None:
            total = min(total, limit)
        sums: dict[str, float] = {}
        started = self.batch_in_epoch
        remaining = max(total - self.batch_in_epoch, 0)
        bar = self.run_log.progress(remaining, f"epoch {self.epoch + 1}")
        # islice: a step limit stops the loader without fetching a batch it would drop
        for batch in itertools.islice(loader, remaining) if remaining else ():
            terms = self.train_step(batch)
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + value
            self.samples_in_epoch += self.global_batch
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}")
            if self.step % self.cfg.trainer.log_every == 0:
                self.run_log.scalars("train", terms | self.learning_rates(), self.step)
            every = self.cfg.trainer.checkpoint_every_steps
            if every and self.step % every == 0 and self.batch_in_epoch < total:
                self._save("last.pth")
        bar.close()
        done = max(self.batch_in_epoch - started, 1)  # steps run now (a resumed epoch: fewer)
        return {key: value / done for key, value in sums.items()}

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        decode = getattr(self.dataset, "decode_batch", None)  # faces decoded on the device
        if decode is not None:
            batch = decode(batch, self.device)
        batch = {k: self._to_device(v) for k, v in batch.items()}
        with self.autocast():
            outputs = self.net(batch)
        terms = {loss.name: loss(outputs, batch) for loss in self.losses}
        total = sum(terms.values())
        # One small all-reduce: logs show the job's loss, and every process sees the same
        # non-finite value and stops together (a lone rank stopping would hang the others).
        values = torch.stack([t.detach().float() for t in (total, *terms.values())])
        shown = dict(zip(["loss", *terms], self.dist.mean(values).tolist(), strict=True))
        if not all(math.isfinite(value) for value in shown.values()):
            raise NonFiniteLossError(
                f"loss is {shown['loss']} at epoch {self.epoch + 1}, step {self.step + 1} "
                f"({', '.join(f'{k}={v:.4g}' for k, v in shown.items() if k != 'loss')}); training "
                f"stopped before updating the weights. {run_checkpoint_path(self.run_dir)} "
                "holds the last good state; lower the learning rate or enable trainer.grad_clip"
            )
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.trainer.grad_clip is not None:
            for optimizer in self.optimizers.values():
                self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.trainer.grad_clip)
        for optimizer in self.optimizers.values():
            self.scaler.step(optimizer)
        self.scaler.update()
        self.step += 1
        for scheduler in self.schedulers.values():
            scheduler.step("step")
        return shown

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(self.device, non_blocking=True)
        return tensor.contiguous(memory_format=self.memory_format) if tensor.ndim == 4 else tensor

    def learning_rates(self) -> dict[str, float]:
        return {f"lr/{k}": o.param_groups[0]["lr"] for k, o in self.optimizers.items()}

    def end_epoch(self, losses: dict[str, float]) -> dict[str, Any]:
        self.epoch += 1
        self.samples_in_epoch = 0
        for scheduler in self.schedulers.values():
            scheduler.step("epoch")
        row: dict[str, Any] = {"epoch": self.epoch, "step": self.step}
        row |= {f"train/{k}": v for k, v in losses.items()} | self.learning_rates()
        metrics = {}
        if self.pair_sets and self.epoch % self.cfg.validation.every == 0:
            metrics = self.validate()
            row |= {
                f"{name}/{score}/{key}": values[key]
                for name, per_score in metrics.items()
                for score, values in per_score.items()
                for key in ("accuracy", "auc")
                if key in values
            }
        self.run_log.epoch(row)
        if metrics:
            monitor = self.cfg.validation.monitor
            name = monitor.pair_set if monitor is not None else next(iter(metrics))
            self.threshold = metrics[name]["xcos"].get("threshold", self.threshold)
        improved = self._update_best(metrics)
        self._save("last.pth")
        if improved:
            self._save("best.pth")
        return metrics

    def _update_best(self, metrics: dict[str, Any]) -> bool:
        monitor = self.cfg.validation.monitor
        if monitor is None or not metrics:
            return True  # without a monitored set the latest epoch is the best one known
        value = metrics[monitor.pair_set][monitor.score][monitor.metric]
        if self.best is None or value > self.best:
            log.info(
                "best %s/%s/%s so far: %.4f", monitor.pair_set, monitor.score, monitor.metric, value
            )
            self.best = value
            return True
        return False

    def validate(self) -> dict[str, dict[str, dict[str, float]]]:
        """k-fold accuracy of xCos and cos on every validation pair set."""
        results = {}
        for pair_set in self.pair_sets:
            result = evaluate_pair_set(
                self.model,
                pair_set,
                self.device,
                batch_size=self.cfg.validation.batch_size,
                flip=self.cfg.validation.flip,
                metric_cfgs=self.cfg.validation.metrics,
                autocast=self.autocast,
                backbone_outputs=self.validation_outputs.get(pair_set.name),
                dist=self.dist,
            )
            results[pair_set.name] = result.metrics
            summary = ", ".join(
                f"{score} {values['accuracy'] * 100:.2f}%"
                for score, values in result.metrics.items()
            )
            log.info("epoch %d validation %s: %s", self.epoch, pair_set.name, summary)
            self.run_log.scalars(
                f"val/{pair_set.name}",
                {f"{s}/accuracy": v["accuracy"] for s, v in result.metrics.items()},
                self.epoch,
            )
            if pair_set is self.pair_sets[0]:
                self.run_log.maps(self.model, pair_set, self.device, self.epoch)
        return results
