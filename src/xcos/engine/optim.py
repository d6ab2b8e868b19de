"""Optimizers over named parameter groups and schedulers with warm-up."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from xcos.errors import ConfigError
from xcos.registry import OPTIMIZERS, SCHEDULERS

#: torch optimizers and schedulers usable by name in ``optimizers.*`` / ``schedulers.*``.
TORCH_OPTIMIZERS = ("SGD", "Adam", "AdamW", "RMSprop")
TORCH_SCHEDULERS = ("StepLR", "MultiStepLR", "CosineAnnealingLR", "ExponentialLR", "OneCycleLR")

for _name in TORCH_OPTIMIZERS:
    OPTIMIZERS.add(_name, getattr(torch.optim, _name))
for _name in TORCH_SCHEDULERS:
    SCHEDULERS.add(_name, getattr(torch.optim.lr_scheduler, _name))


def split_decay(params: list[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """BN weights and biases (all 1-d parameters) get no weight decay."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def build_optimizers(
    cfgs: dict[str, dict[str, Any]], groups: dict[str, list[nn.Parameter]]
) -> dict[str, torch.optim.Optimizer]:
    """One optimizer per config entry, each over the model parameter groups it names.

    Every trainable group must belong to exactly one optimizer.
    """
    optimizers, owner = {}, {}
    for name, cfg in cfgs.items():
        path = f"optimizers.{name}"
        wanted = cfg.get("groups", list(groups))
        params: list[nn.Parameter] = []
        for group in wanted:
            if group not in groups:
                raise ConfigError(
                    f"{path}.groups: unknown group {group!r}; known: {', '.join(groups)}"
                )
            if group in owner:
                raise ConfigError(
                    f"{path}.groups: {group!r} is already updated by optimizers.{owner[group]}"
                )
            owner[group] = name
            params += groups[group]
        if not params:
            continue
        param_groups = split_decay(params, float(cfg.get("weight_decay", 0.0)))
        optimizers[name] = OPTIMIZERS.build(cfg, path, own_keys=("groups",), params=param_groups)
    forgotten = [g for g, p in groups.items() if p and g not in owner]
    if forgotten:
        raise ConfigError(f"optimizers: no optimizer updates the parameter group(s) {forgotten}")
    return optimizers


class Scheduler:
    """A torch scheduler stepped per ``epoch`` or per ``step``, after ``warmup`` linear steps."""

    def __init__(self, cfg: dict[str, Any], optimizer: torch.optim.Optimizer, path: str) -> None:
        self.interval = cfg.get("interval", "epoch")
        own = ("interval", "warmup", "warmup_factor")
        main = SCHEDULERS.build(cfg, path, own_keys=own, optimizer=optimizer)
        warmup = int(cfg.get("warmup", 0))
        if warmup > 0:
            start = float(cfg.get("warmup_factor", 0.01))
            ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start, 1.0, total_iters=warmup)
            main = torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], [warmup])
        self.scheduler = main

    def step(self, interval: str) -> None:
        if interval == self.interval:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def build_schedulers(
    cfgs: dict[str, dict[str, Any]], optimizers: dict[str, torch.optim.Optimizer]
) -> dict[str, Scheduler]:
    """Schedulers keyed like the optimizers they drive."""
    schedulers = {}
    for name, cfg in cfgs.items():
        if name not in optimizers:
            raise ConfigError(
                f"schedulers.{name}: no optimizer named {name!r} ({', '.join(optimizers)})"
            )
        schedulers[name] = Scheduler(cfg, optimizers[name], f"schedulers.{name}")
    return schedulers
