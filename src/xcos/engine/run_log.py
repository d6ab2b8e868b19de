"""What a training run writes besides checkpoints: TensorBoard, metrics.csv, progress bars."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from xcos.io_utils import atomic_write

log = logging.getLogger(__name__)


class RunLog:
    """Scalars and map figures to ``DIR/tensorboard``; one row per epoch to ``DIR/metrics.csv``.

    ``enabled=False`` (every rank but 0 of a distributed run) writes nothing and shows no bar.
    """

    def __init__(
        self, run_dir: Path, trainer_cfg: Any, resumed: bool = False, enabled: bool = True
    ) -> None:
        self.run_dir = run_dir
        self.cfg = trainer_cfg
        self.enabled = enabled
        self.writer = None
        if trainer_cfg.tensorboard and enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))
        self.csv_path = run_dir / "metrics.csv"
        self._columns: list[str] | None = None
        if resumed and self.csv_path.is_file():
            with self.csv_path.open(newline="") as handle:
                self._columns = next(csv.reader(handle), None)

    def progress(self, total: int, description: str) -> tqdm:
        enabled = self.enabled and self.cfg.progress_bar and sys.stderr.isatty()
        return tqdm(
            total=total, desc=description, disable=not enabled, leave=False, dynamic_ncols=True
        )

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)

    def epoch(self, row: dict[str, Any]) -> None:
        """Append one epoch's metrics to metrics.csv and the log."""
        if not self.enabled:
            return
        log.info(
            "epoch %d: %s",
            row["epoch"],
            ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in row.items()
                if k != "epoch"
            ),
        )
        if self._columns is None:
            self._columns = list(row)
            with atomic_write(self.csv_path, "w", newline="") as handle:  # rows are appended
                csv.writer(handle).writerow(self._columns)
        with self.csv_path.open("a", newline="") as handle:
            csv.writer(handle).writerow([row.get(column, "") for column in self._columns])

    def maps(self, model, pair_set, device, epoch: int) -> None:
        """Figures of a few validation pairs' patch-cosine, attention and difference maps,
        each cell on its real pixels (``explain_pairs``' explanations, undecided)."""
        if self.writer is None or self.cfg.tensorboard_images <= 0:
            return
        from xcos.evaluation.evaluator import pick_examples
        from xcos.explain.explanation import explain_pairs

        explanations = explain_pairs(
            model, pair_set, pick_examples(pair_set, self.cfg.tensorboard_images), device
        )
        for number, explanation in enumerate(explanations):
            figure = explanation.figure()
            self.writer.add_figure(f"maps/{pair_set.name}/{number}", figure, epoch, close=False)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
