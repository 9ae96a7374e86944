"""Artefacts are byte-reproducible and the committed results carry nothing of the machine that made them."""

from __future__ import annotations

import hashlib
import zipfile

import pytest
from conftest import REPO, TINY

from rmtprune.train.checkpoint import load_file, save_atomic

RMT = ["pruning=rmt", "pruning.tolerance=1.0", "pruning.min_size=100", "schedule=constant", "schedule.value=0.5"]


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_identical_runs_write_identical_model_files(cli, tmp_path):
    for name in ("a", "b"):
        assert cli("train", *TINY, *RMT, "epochs=2", f"hydra.run.dir={name}", f"output_root={name}")[0] == 0
    assert sha256(tmp_path / "a" / "model.pt") == sha256(tmp_path / "b" / "model.pt")
    # checkpoint.pt holds the wall time, so the runs' files differ; saved again, the same object is the same bytes
    ckpt = load_file(tmp_path / "a" / "checkpoint.pt")
    save_atomic(ckpt, tmp_path / "again.pt")
    save_atomic(ckpt, tmp_path / "again2.pt")
    assert sha256(tmp_path / "again.pt") == sha256(tmp_path / "again2.pt")
    roots = {n.split("/")[0] for n in zipfile.ZipFile(tmp_path / "again.pt").namelist()}
    assert roots == {"archive"}  # not the random temporary file's name


def test_relative_paths_rewrites_the_paths_under_the_repository_and_its_parents(tmp_path):
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from relative_paths import main

    repo, run = tmp_path / "repo", tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "summary.json").write_text(f'{{"run_dir": "{repo}/outputs/x", "offline_dir": "{tmp_path}/shared/data"}}')
    (run / ".hydra" / "hydra.yaml").write_text(f"cwd: {repo}\nother: {repo}2/y\nsub: out{repo}\n")
    assert main(["--root", str(repo), str(run)]) == 0
    assert (run / "summary.json").read_text() == '{"run_dir": "outputs/x", "offline_dir": "../shared/data"}'
    assert (run / ".hydra" / "hydra.yaml").read_text() == f"cwd: .\nother: ../repo2/y\nsub: out{repo}\n"


def test_no_committed_file_holds_an_absolute_path_of_this_machine():
    import subprocess
    from pathlib import Path

    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True)
    files = [REPO / f for f in listed.stdout.split("\0") if f] if listed.returncode == 0 else \
        [p for p in (REPO / "docs").rglob("*") if p.is_file()]
    assert len(files) > 675
    needles = [s.encode() for s in ("/work/", "/root/", "/home/", f"{REPO}/", f"{Path.home()}/")]
    here = Path(__file__).resolve()
    found = [str(f.relative_to(REPO)) for f in files
             if f.resolve() != here and f.is_file() and any(n in f.read_bytes() for n in needles)]
    assert not found, f"{len(found)} committed files hold absolute paths, e.g. {found[:3]}"
