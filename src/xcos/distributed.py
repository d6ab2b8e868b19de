"""torch.distributed, as launched by torchrun: the process group comes from the environment.

Nothing here runs at import time. ``init_distributed`` reads the variables torchrun sets
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); without them, or
with a world of one, the run is an ordinary single process and every helper is a no-op, so the
same code trains on one CPU, one GPU, eight GPUs or several nodes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from xcos.errors import ConfigError, SetupError
from xcos.runtime import resolve_device

log = logging.getLogger(__name__)

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Distributed:
    """This process's place in the job; ``Distributed()`` is the single-process job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, TensorBoard and checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (filling caches, generating data), then the first
        process of every other node, then all the others.

        With a file system shared by the nodes, everyone after rank 0 finds its files; with
        node-local disks, each node's first process writes that node's copy alone. Either way
        no two processes race to write the same file.
        """
        turn = 0 if self.is_main else 1 if self.local_rank == 0 else 2
        for _ in range(turn):
            self.barrier()
        yield
        for _ in range(turn, 2):
            self.barrier()

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every rank, in rank order (picklable values, e.g. numpy arrays)."""
        if not self.enabled:
            return [value]
        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, value)
        return gathered

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank."""
        if not self.enabled:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def share_buffers(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (batch-norm running statistics).

        DistributedDataParallel keeps parameters equal, but each rank's forward updates its
        running statistics from its own batch; evaluating a shard with them would score a
        model other than the one rank 0 saves.
        """
        if self.enabled:
            for buffer in module.buffers():
                torch_dist.broadcast(buffer, src=0)

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The average of ``tensor`` over the ranks (a new tensor; the input is unchanged)."""
        if not self.enabled:
            return tensor
        total = tensor.detach().clone()
        torch_dist.all_reduce(total)
        return total / self.world_size


def launched_world_size() -> int:
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise SetupError(f"WORLD_SIZE={value!r} is not an integer") from None


def init_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU) and pick this
    process's device (``cuda`` means ``cuda:LOCAL_RANK``); a plain run gets ``Distributed()``."""
    world_size = launched_world_size()
    if world_size <= 1:
        return Distributed(), resolve_device(device_name)
    missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
    if missing:
        raise SetupError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start distributed "
            "runs with torchrun (e.g. torchrun --nproc_per_node=2 main.py -tc config.json)"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = process_device(device_name, local_rank)
    if not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend, init_method="env://")
        log.info("process group: %s, rank %d of %d, %s", backend, rank, world_size, device)
    return Distributed(rank, world_size, local_rank), device


def process_device(device_name: str, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank`` on its node."""
    if ":" in device_name:
        raise ConfigError(
            f"--device {device_name}: under torchrun each process takes cuda:LOCAL_RANK; "
            "pass --device cuda (or auto) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    device = resolve_device(device_name)
    if device.type != "cuda":
        return device
    if local_rank >= torch.cuda.device_count():
        raise SetupError(
            f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA device(s) are "
            "visible: lower --nproc_per_node"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def shutdown_distributed(wait: bool = False) -> None:
    """Leave the process group. ``wait`` (a process that finished its work): first meet the
    others at a barrier, so that rank 0, which hosts the rendezvous store, never leaves while
    another process still talks to it; gloo aborts such a process at exit ("terminate called
    without an active exception", SIGABRT). A process leaving on an error does not wait: the
    others may never reach the barrier."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        if wait:
            torch_dist.barrier()
        torch_dist.destroy_process_group()
