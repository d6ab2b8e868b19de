"""Test-only launcher: ``xcos.cli.main`` under torchrun, with one worker killed mid-training.

    python -m torch.distributed.run ... tests/helpers/kill_worker.py RANK STEPS <xcos arguments>

In torchrun's first attempt (``TORCHELASTIC_RESTART_COUNT`` 0), the worker of rank RANK sends
itself SIGKILL once STEPS training steps are done, as a crashed or OOM-killed worker would die;
restarted workers run the plain command. The library has no fault-injection hook: the kill is
patched in here, around ``Trainer.train_step``.
"""

from __future__ import annotations

import os
import signal
import sys

from xcos.cli import main
from xcos.engine.trainer import Trainer


def die_after(steps: int) -> None:
    """Make this process kill itself as it starts training step ``steps + 1``."""
    real_step = Trainer.train_step

    def train_step(self: Trainer, batch):
        if self.step == steps:
            print(f"kill_worker: rank {self.dist.rank} dies after step {steps}", file=sys.stderr)
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(self, batch)

    Trainer.train_step = train_step


if __name__ == "__main__":
    rank, steps, arguments = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if first_attempt and os.environ.get("RANK") == str(rank):
        die_after(steps)
    sys.exit(main(arguments))
