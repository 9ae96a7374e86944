"""What a run shows while it trains: a rich progress bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

log = logging.getLogger("rmtprune")


FILE_ONLY = "rmtprune_file_only"  # a log record's attribute: written to log files, not to the terminal


def use_rich(mode: str) -> bool:
    return mode == "rich" or (mode == "auto" and sys.stderr.isatty())


class BatchProgress:
    """Per-batch bar (epoch, batch, loss, accuracy, samples/s) when rich is on; a no-op otherwise.

    The bar is shown while an epoch's batches run and cleared once its last batch is done, so the epoch's
    log lines and event table never print over it."""

    def __init__(self, mode: str) -> None:
        self.enabled = use_rich(mode)
        self._progress: Progress | None = None
        self._task: Any = None
        self._total = 0

    def __enter__(self) -> "BatchProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()  # transient: the bar leaves the screen
            self._progress = None

    def start_epoch(self, epoch: int, n_batches: int) -> None:
        if not self.enabled:
            return
        self._stop()
        self._progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}  {task.fields[speed]:,.0f} samples/s"),
            TimeElapsedColumn(), console=Console(stderr=True), transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=n_batches, epoch=epoch, loss=0.0, acc=0.0, speed=0.0)
        self._total = n_batches

    def update(self, batches: int, loss: float, acc: float, speed: float) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=batches, loss=loss, acc=acc, speed=speed)
            if batches >= self._total:
                self._stop()


class StepProgress:
    """``with StepProgress("fitting", 11, "rich") as step: step("layer 1")``: a line on stderr saying what runs,
    then a bar over the steps (with the time left) when rich is on, cleared at the end."""

    def __init__(self, what: str, total: int, mode: str = "auto") -> None:
        self.what, self.total = what, total
        self.console = Console(stderr=True)
        self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
                                  transient=True) if use_rich(mode) else None
        self._task: Any = None

    def __enter__(self) -> "StepProgress":
        self.console.print(self.what, highlight=False, markup=False, soft_wrap=True)
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("", total=self.total)
        return self

    def __call__(self, label: str) -> None:
        """Step ``label`` begins (the one before it is done)."""
        if self._progress is not None:
            done = self._progress.tasks[0].description != ""
            self._progress.update(self._task, description=label, advance=1 if done else 0)

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()


def show_event(records: list[dict[str, Any]], epoch: int, mode: str) -> None:
    """A compact table of one pruning event (rich on a terminal; log lines otherwise)."""
    if not records:
        return
    if use_rich(mode):
        table = Table(title=f"pruning after epoch {epoch}", title_justify="left")
        for col in ("layer", "shape", "sigma2", "spikes", "fit err", "keep f", "rank", "action", "params"):
            table.add_column(col, justify="left" if col in ("layer", "action") else "right")
        for r in records:
            table.add_row(*_cells(r))
        Console(stderr=True).print(table)
        _console_skips_file_only()
    for r in records:
        layer, shape, sigma2, spikes, err, f, rank, action, params = _cells(r)
        log.info("prune e%d %-14s %-10s sigma2 %-9s spikes %-5s fit_err %-7s f %-5s rank %-11s %-14s params %s",
                 epoch, layer, shape, sigma2, spikes, err, f, rank, action, params, extra={FILE_ONLY: use_rich(mode)})


def _skip_file_only(record: logging.LogRecord) -> bool:
    return not getattr(record, FILE_ONLY, False)


def _console_skips_file_only() -> None:
    """Records marked ``extra={FILE_ONLY: True}`` (what the terminal shows otherwise, e.g. as a table) go to the
    log files (train.log) only: every console handler of ``log`` and its parents drops them."""
    logger: logging.Logger | None = log
    while logger is not None:
        for handler in logger.handlers:
            if not isinstance(handler, logging.FileHandler) and _skip_file_only not in handler.filters:
                handler.addFilter(_skip_file_only)
        logger = logger.parent if logger.propagate else None


def _cells(r: dict[str, Any]) -> tuple[str, ...]:
    def num(v: Any, fmt: str) -> str:
        return "-" if v != v else format(v, fmt)  # NaN -> "-"
    return (
        str(r["layer"]), f"{r['out']}x{r['in']}", num(r["sigma2"], ".3g"), num(r["n_spikes"], ".0f"),
        num(r["fit_error"], ".4f"), num(r["keep_fraction"], ".3f"),
        "-" if r["rank_before"] != r["rank_before"] else f"{r['rank_before']}->{r['rank_after']}",
        str(r["action"]), f"{r['params_before']:,}->{r['params_after']:,}",
    )
