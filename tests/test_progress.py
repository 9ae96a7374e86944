"""What a run shows while it trains: each event once on the terminal, both forms in train.log, a bar that
leaves the screen when an epoch's batches are done."""

from __future__ import annotations

import io

import pytest
from conftest import TINY

PRUNE = [a for a in TINY if a != "pruning=none"] + ["pruning=rmt", "pruning.min_size=100", "pruning.tolerance=1.0",
                                                    "schedule=oneshot", "epochs=2", "hydra.run.dir=run"]


@pytest.mark.slow
@pytest.mark.parametrize("progress", ["rich", "plain"])
def test_the_terminal_shows_each_event_once_and_train_log_keeps_its_lines(cli, tmp_path, progress):
    code, out, err = cli("train", *[a for a in PRUNE if not a.startswith("progress=")], f"progress={progress}")
    assert code == 0, err
    terminal = out + err
    assert terminal.count("pruning after epoch 1") == (progress == "rich")  # the rich table
    assert ("prune e1 " in terminal) == (progress == "plain")  # or the log lines
    assert "prune e1 " in (tmp_path / "run" / "train.log").read_text()


def test_the_batch_bar_is_erased_when_the_epochs_last_batch_is_done(monkeypatch):
    from rich.console import Console

    import rmtprune.train.progress as progress

    screen = io.StringIO()
    monkeypatch.setattr(progress, "Console", lambda **kw: Console(file=screen, force_terminal=True, width=100))
    with progress.BatchProgress("rich") as bar:
        bar.start_epoch(1, 4)
        bar.update(2, 0.5, 0.5, 100.0)
        bar.update(4, 0.4, 0.6, 100.0)
        shown = screen.getvalue()
        assert "samples/s" in shown and shown.endswith("\x1b[2K")  # the bar's last line erased
        bar.start_epoch(2, 4)  # the next epoch draws a new bar
        bar.update(1, 0.4, 0.6, 100.0)
    assert "epoch 2" in screen.getvalue()[len(shown):]


@pytest.mark.slow
def test_the_magnitude_sweep_says_what_runs_and_how_long_it_will_take(cli, tmp_path):
    args = [a for a in TINY if not a.startswith("magnitude_sweep")] + [
        "epochs=1", "magnitude_sweep.enabled=true", "magnitude_sweep.n_thresholds=4", "hydra.run.dir=run"]
    code, out, err = cli("train", *args)
    assert code == 0, err
    log = (tmp_path / "run" / "train.log").read_text()
    assert "magnitude sweep after training: 4 sparsity levels, each a pass over the 200 test images" in log
    assert "magnitude sweep: level 1 of 4 took" in log and "s left" in log
    assert "magnitude sweep: 4 levels in" in out + err  # on the terminal too
