"""What a run records as it trains: ``history.csv``, TensorBoard event files, a line per epoch.

Per epoch, every history column (the weighted total ``loss``, each unweighted ``loss_<term>``,
``lr``, and ``<split>_<task>_<wa|ua>`` for the validation, test and speaker-test parts) becomes a
TensorBoard scalar under ``<run>/tb/`` (tags ``loss/<term>``, ``<split>/<task>_<metric>``,
``train/lr``); at the end the selected epoch is logged too. View them with
``tensorboard --logdir runs/`` (every run of a folder side by side). A resumed run discards the
events logged after its checkpoint (TensorBoard's ``purge_step``), so its curves show each epoch
once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from torch.utils.tensorboard import SummaryWriter

from hcld_lib.io import atomic_write_text


def _tag(column: str) -> str | None:
    """The TensorBoard tag of a history column (``None``: not logged)."""
    if column == "loss":
        return "loss/total"
    if column.startswith("loss_"):
        return f"loss/{column[5:]}"
    if column == "lr":
        return "train/lr"
    for split in ("speaker_test", "val", "test"):
        if column.startswith(split + "_"):
            return f"{split}/{column[len(split) + 1:]}"
    return None


class RunLog:
    """The per-epoch record of one run (see the module docstring).

    Args:
        run_dir: the run's folder.
        history: the rows of the epochs already done (a resumed run's checkpoint).
        every: ``history.csv`` is rewritten every this many epochs and at the end (the checkpoint
            holds the rows in between).
        line: ``line(row)`` -> the text printed per epoch, or ``None`` for silence.
        callback: ``callback(epoch, row)`` after each epoch.
    """

    def __init__(self, run_dir: Path, history: list[dict[str, Any]], every: int = 1,
                 line: Callable[[dict[str, Any]], str] | None = None,
                 callback: Callable[[int, dict[str, Any]], None] | None = None) -> None:
        self.run_dir, self.history, self.every = Path(run_dir), list(history), int(every)
        self.line, self.callback = line, callback
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=len(self.history) + 1)

    def _write_history(self) -> None:
        atomic_write_text(self.run_dir / "history.csv",
                          pd.DataFrame(self.history).to_csv(index=False))

    def epoch(self, row: dict[str, Any]) -> None:
        """Record one finished epoch's history row."""
        self.history.append(row)
        step = int(row["epoch"])
        for column, value in row.items():
            tag = _tag(column)
            if tag is not None and isinstance(value, int | float) and not math.isnan(value):
                self.writer.add_scalar(tag, value, step)
        if step % self.every == 0:
            self._write_history()
            self.writer.flush()
        if self.line is not None:
            print(self.line(row), flush=True)
        if self.callback is not None:
            self.callback(step, row)

    def close(self, selected_epoch: int) -> None:
        """The run is over: write the history and the selected epoch, close the event file."""
        self._write_history()
        last = int(self.history[-1]["epoch"]) if self.history else 0
        self.writer.add_scalar("train/selected_epoch", selected_epoch, last)
        self.writer.add_text("selection", f"selected epoch {selected_epoch} (best validation "
                                          "emotion UA, the earlier on ties)", last)
        self.writer.close()
