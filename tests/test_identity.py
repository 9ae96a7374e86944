"""One definition of "the same run": what enters a run's identity (config key) and what does not."""

from __future__ import annotations

import json

import pytest
from conftest import FAST
from omegaconf import OmegaConf
from tests_support.configs import compose_config

from rmtprune.config.identity import config_key, identity, identity_differences


def test_a_normal_run_holds_no_pruning_or_schedule_keys():
    a = compose_config("pruning=none", "schedule.horizon=5")
    b = compose_config("pruning=none", "schedule=oneshot", "experiment=mnist_fc_1000_1000_1000_500", "topology=784-1000-1000-500-10",
                 "epochs=10")
    assert identity(a)["pruning"] == {"name": "none"} and "schedule" not in identity(a)
    assert config_key(a) == config_key(b)


@pytest.mark.slow
def test_only_the_keys_an_option_uses_count():
    rmt = compose_config("pruning=rmt")
    assert config_key(rmt) != config_key(compose_config("pruning=rmt", "pruning.tolerance=0.1"))
    assert set(identity(rmt)["schedule"]) == {"name", "horizon"}
    oneshot = identity(compose_config("pruning=rmt", "schedule=oneshot"))
    assert oneshot["schedule"] == {"name": "oneshot"}
    # the control arm: its calendar counts, rmt's fit settings (set by a preset) and the schedule do not
    c1 = compose_config("pruning=control", "experiment=fashion_cnn")
    c2 = compose_config("pruning=control", "experiment=fashion_cnn", "pruning.every=2")
    assert "conv_tolerance" not in identity(c1)["pruning"] and "schedule" not in identity(c1)
    assert config_key(c1) != config_key(c2)
    # a CNN is not named by the MLP topology it does not use
    assert "topology" not in identity(compose_config("model=cnn"))


@pytest.mark.slow
def test_where_and_how_a_run_reports_is_not_its_identity():
    base = compose_config()
    for extra in (["device=cpu"], ["threads=1"], ["magnitude_sweep.enabled=false"], ["progress=none"],
                  ["logger=tensorboard"], ["deterministic=true"], ["dataset.offline_dir=/elsewhere"],
                  ["dataset.verify_md5=false"], ["output_root=x"], ["eval_batch_size=7"]):
        assert config_key(compose_config(*extra)) == config_key(base), extra
    for extra in (["seed=1"], ["precision=bf16"], ["compile=true"], ["optimizer.lr=0.1"], ["dataset.train_size=100"]):
        assert config_key(compose_config(*extra)) != config_key(base), extra


def test_a_summary_config_and_the_live_config_give_the_same_key():
    cfg = compose_config("pruning=rmt", "seed=3")
    plain = json.loads(json.dumps(OmegaConf.to_container(cfg, resolve=True)))
    assert config_key(plain) == config_key(cfg)
    assert identity_differences(plain, compose_config("pruning=rmt", "seed=4")) == ["seed"]


@pytest.mark.slow
def test_skip_done_finds_the_same_baseline_under_another_preset(cli, tmp_path):
    assert cli("train", *FAST, "device=cpu", "epochs=1", "hydra.run.dir=outputs/a")[0] == 0
    # the preset sets pruning and schedule keys (tolerance, horizon 300) that a normal run does not use
    code, _, err = cli("train", "experiment=mnist_fc_1000_1000_1000_500", *FAST, "device=cpu", "epochs=1",
                       "skip_done=true", "hydra.run.dir=outputs/b")
    assert code == 0, err
    assert not (tmp_path / "outputs" / "b" / "metrics.csv").exists()
    assert (tmp_path / "outputs" / "b" / "redirect.json").exists()


@pytest.mark.slow
def test_turning_the_magnitude_sweep_off_does_not_block_a_resume(cli, tmp_path):
    args = [*FAST, "device=cpu"]
    assert cli("train", *args, "epochs=1", "magnitude_sweep.enabled=true", "magnitude_sweep.n_thresholds=3",
               "hydra.run.dir=base")[0] == 0
    code, _, err = cli("train", *args, "epochs=2", "magnitude_sweep.enabled=false", "resume=base", "hydra.run.dir=x")
    assert code == 0, err
    summary = json.loads((tmp_path / "base" / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and summary["status"] == "completed"


@pytest.mark.slow
def test_a_key_added_later_keeps_the_identity_of_runs_made_before_it_at_its_default():
    """pruning.target_epoch came after IDENTITY_VERSION 2: at null it computes what earlier baseline runs
    computed, and a run made before the key existed (its summary has no such key) keeps its identity."""
    for arm in ("magnitude", "lowrank"):
        now = compose_config(f"pruning={arm}", "pruning.target_params=1000")
        before = json.loads(json.dumps(OmegaConf.to_container(now, resolve=True)))
        del before["pruning"]["target_epoch"]
        assert config_key(before) == config_key(now)
        early = compose_config(f"pruning={arm}", "pruning.target_params=1000", "pruning.target_epoch=5")
        assert identity_differences(early, now) == ["pruning.target_epoch"]


def test_the_spike_count_cut_keys_leave_earlier_rmt_runs_their_identity():
    """pruning.margin (issue 20) at null and schedule.patience (a key of schedule=spikes only) are not in
    the identity of an rmt run made before them; set, they are."""
    now = compose_config("pruning=rmt", "schedule=oneshot")
    before = json.loads(json.dumps(OmegaConf.to_container(now, resolve=True)))
    del before["pruning"]["margin"], before["schedule"]["patience"]
    assert config_key(before) == config_key(now)
    margin = compose_config("pruning=rmt", "schedule=oneshot", "pruning.margin=2")
    assert identity_differences(margin, now) == ["pruning.margin"]
    spikes = compose_config("pruning=rmt", "schedule=spikes", "schedule.patience=3")
    assert identity(spikes)["schedule"] == {"name": "spikes", "patience": 3}
