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


def test_every_file_of_a_run_folder_is_named_in_run_folder_only():
    """The package names a run folder's files once (runs.folder.RunFolder): no other module holds a string that
    is one of these names (messages may mention them inside longer text)."""
    import ast
    from pathlib import Path

    from rmtprune.runs.folder import RunFolder

    names = {v for k, v in vars(RunFolder).items() if k.isupper() and isinstance(v, str)}
    assert {"summary.json", "metrics.csv", "layers.csv", "spectra.npz", "checkpoint.pt", "model.pt", "DONE",
            "redirect.json", "magnitude_sweep.csv", "train.log"} <= names
    package = Path(__file__).resolve().parents[1] / "rmtprune"
    home = package / "runs" / "folder.py"
    found = [f"{path.relative_to(package)}:{node.lineno} {node.value!r}" for path in sorted(package.rglob("*.py"))
             if path != home for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and node.value in names]
    assert not found, found


def test_the_redirect_reader_says_why_a_redirect_leads_nowhere(tmp_path):
    from rmtprune.runs.folder import RunFolder, resolve_redirect

    target = RunFolder(tmp_path / "target")
    target.path.mkdir()
    job = RunFolder(tmp_path / "job")
    job.path.mkdir()
    assert job.redirect() == (None, None) and job.resolve() == job
    job.write_redirect(target.path, "resumed")
    assert job.redirect() == (target.path.resolve(), None) and resolve_redirect(job.path) == target.path.resolve()
    for text, why in (("{ not json", "unreadable (JSONDecodeError)"), ('{"run_dir": 5}', "names no run folder"),
                      ("[1]", "names no run folder"), ('{"run_dir": "/no/such/folder"}', "not a folder here")):
        job.redirect_json.write_text(text)
        target_found, reason = job.redirect()
        assert target_found is None and why in reason and job.resolve() == job  # results stay in the job's folder


def test_one_walk_finds_run_folders_and_redirects_at_any_depth(tmp_path):
    from tests_support.runs import fake_run

    from rmtprune.runs.folder import RunFolder, find_runs, walk

    fake_run(tmp_path / "a", summary={"config_key": "k1", "started_at": "2026-01-01"})
    fake_run(tmp_path / "sweep" / "0", summary={"config_key": "k1", "started_at": "2026-02-01"})
    fake_run(tmp_path / "sweep" / "1", summary={"config_key": "k2"})
    RunFolder(tmp_path / "sweep" / "2").path.mkdir()
    RunFolder(tmp_path / "sweep" / "2").write_redirect(tmp_path / "a", "already completed")
    (tmp_path / "sweep" / "3").mkdir()  # no run there
    assert [f.path.relative_to(tmp_path).as_posix() for f in walk(tmp_path)] == ["a", "sweep/0", "sweep/1", "sweep/2"]
    assert [f.relative_to(tmp_path).as_posix() for f, _ in find_runs(tmp_path, "k1")] == ["sweep/0", "a"]  # newest first
    assert walk(tmp_path / "missing") == []


def test_a_run_folder_is_claimed_by_one_run(tmp_path):
    from tests_support.runs import fake_run

    from rmtprune.errors import UserError
    from rmtprune.runs.folder import RunFolder

    empty = RunFolder(tmp_path / "empty")
    empty.path.mkdir()
    empty.claim("k")
    empty.claim(None)
    leftover = RunFolder(tmp_path / "leftover")
    leftover.path.mkdir()
    leftover.spectra_npz.write_bytes(b"")
    for key, needle in (("k", "already holds files of another run (spectra.npz)"),
                        (None, "already holds the results of another run (spectra.npz)")):
        with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            leftover.claim(key)
    finished = fake_run(tmp_path / "done", summary={"config_key": "k", "status": "completed"})
    finished.claim("k")  # its own finished run: nothing is trained again
    assert finished.finished("k") and not finished.finished("other")
    with pytest.raises(UserError, match="holds another run"):
        finished.claim("other")
    with pytest.raises(UserError, match="already holds the results of another run"):
        finished.claim(None)  # rmtprune prune writes into an empty folder only
    unfinished = fake_run(tmp_path / "stopped", summary={"config_key": "k", "status": "interrupted"})
    unfinished.checkpoint_pt.write_bytes(b"")
    with pytest.raises(UserError, match="holds an unfinished run of this config"):
        unfinished.claim("k")
