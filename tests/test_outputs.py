"""Run-folder files: spectra.npz grows by appending, never by rewriting the earlier events."""

import os

import numpy as np
import pytest

from rmtprune.runs.folder import append_spectra, read_spectra, repair_spectra


def test_spectra_are_appended_and_read_back(tmp_path, monkeypatch):
    path = tmp_path / "spectra.npz"
    a, b, c = np.arange(5, dtype=np.float32), np.arange(3, dtype=np.float32), np.ones(4, dtype=np.float32)
    append_spectra(path, 1, {"layers.0": a, "layers.1": b})
    size_after_first = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(size_after_first - 200)  # the first event's members, before the central directory
    def rewrite(*a, **kw):
        raise AssertionError("the whole file was rewritten")

    monkeypatch.setattr(np, "savez_compressed", rewrite)
    append_spectra(path, 2, {"layers.0": c})
    monkeypatch.undo()
    with open(path, "rb") as f:
        assert f.read(len(head)) == head  # the earlier bytes were not rewritten
    got = read_spectra(path)
    assert set(got) == {1, 2} and np.array_equal(got[1]["layers.0"], a) and np.array_equal(got[2]["layers.0"], c)
    with np.load(path) as data:  # a plain numpy npz
        assert sorted(data.files) == ["e1/layers.0", "e1/layers.1", "e2/layers.0"]


def test_a_repeated_event_replaces_its_entries_and_a_damaged_file_is_moved_aside(tmp_path):
    path = tmp_path / "spectra.npz"
    append_spectra(path, 1, {"layers.0": np.zeros(3)})
    append_spectra(path, 2, {"layers.0": np.zeros(3)})
    append_spectra(path, 2, {"layers.0": np.full(3, 7.0)})  # a resumed run repeats event 2
    got = read_spectra(path)
    assert np.array_equal(got[2]["layers.0"], np.full(3, 7.0)) and set(got) == {1, 2}
    assert repair_spectra(path) is None
    path.write_bytes(path.read_bytes()[:-30])  # a write cut short
    assert "damaged" in repair_spectra(path)
    assert not path.exists() and (tmp_path / "spectra.npz.damaged").exists()
    append_spectra(path, 3, {"layers.0": np.ones(2)})
    assert set(read_spectra(path)) == {3}


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o002, 0o077])
def test_every_file_of_a_run_honours_the_umask(cli, tmp_path, umask):
    """Files written through a temporary file and a rename (summary.json, model.pt, checkpoint.pt, the npz)
    get 0666 less the umask, as plain files do: a colleague reads them where the umask lets them."""
    from conftest import TINY

    old = os.umask(umask)
    try:
        code, _, err = cli("train", *TINY, "epochs=2", "pruning=rmt", "pruning.min_size=100",
                           "hydra.run.dir=run")
    finally:
        os.umask(old)
    assert code == 0, err
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"summary.json", "model.pt", "checkpoint.pt", "metrics.csv"} <= names
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes
