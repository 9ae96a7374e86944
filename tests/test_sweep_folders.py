"""A sweep's job folders are checked before Hydra writes into them: a folder that holds another run is
refused (Hydra would first overwrite its ``.hydra/``), two jobs resolving to one folder are refused, and a
``skip_done`` sweep into its own finished folders still runs."""

from __future__ import annotations

import json

import pytest
from conftest import TINY

SUBDIR = "hydra.sweep.subdir=${pruning.name}_seed${seed}"


def _error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip() and "Warning" not in ln and "warn(" not in ln]


@pytest.mark.slow
def test_a_sweep_into_folders_of_another_config_is_refused_before_hydra_writes(cli, tmp_path):
    code, _, err = cli("train", "-m", *TINY, "epochs=1", "seed=0", "hydra.sweep.dir=sw", SUBDIR)
    assert code == 0, err
    job = tmp_path / "sw" / "none_seed0"
    before = (job / ".hydra" / "config.yaml").read_text()
    assert "lr: 0.02" in before

    code, _, err = cli("train", "-m", *TINY, "epochs=1", "seed=0", "optimizer.lr=0.07", "hydra.sweep.dir=sw", SUBDIR)
    lines = _error_lines(err)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rmtprune: error:"), err
    assert "none_seed0" in lines[0]
    assert (job / ".hydra" / "config.yaml").read_text() == before
    assert "optimizer.lr=0.07" not in (job / ".hydra" / "overrides.yaml").read_text()
    assert json.loads((job / "summary.json").read_text())["config"]["optimizer"]["lr"] == 0.02


@pytest.mark.slow
def test_a_skip_done_sweep_into_its_own_finished_folders_runs_and_another_config_does_not(cli, tmp_path):
    common = ("train", "-m", *TINY, "epochs=1", "seed=0,1", "skip_done=true", "output_root=.",
              "hydra.sweep.dir=sw", SUBDIR)
    code, _, err = cli(*common)
    assert code == 0, err
    code, _, err = cli(*common)  # reproduce_cpu.sh resuming: the same sweep into the same folders
    assert code == 0, err
    code, _, err = cli(*common, "optimizer.lr=0.07")
    assert code == 2 and "sw/none_seed" in err and len(_error_lines(err)) == 1, err


def test_two_jobs_of_one_sweep_in_one_folder_are_refused(cli, tmp_path):
    code, _, err = cli("train", "-m", *TINY, "epochs=1", "seed=0", "pruning=control", "pruning.lr_factor=0.9,0.96",
                       "hydra.sweep.dir=sw", SUBDIR)
    lines = _error_lines(err)
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rmtprune: error:"), err
    assert "pruning.lr_factor=0.9" in lines[0] and "pruning.lr_factor=0.96" in lines[0] and "control_seed0" in lines[0]
    assert not (tmp_path / "sw").exists()
