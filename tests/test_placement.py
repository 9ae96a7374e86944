"""GPU placement of sweep jobs (rmtprune.commands.placement): arms share the GPUs evenly."""

from __future__ import annotations

from collections import Counter

import pytest

from rmtprune.commands.placement import gpu_for_job, sweep_jobs, sweep_overrides_of


def placed(overrides, n_gpus):
    jobs = sweep_jobs(overrides)
    out = []
    for k, job in enumerate(jobs):
        values = dict(item.split("=", 1) for item in job)
        out.append((values, gpu_for_job(k, overrides, n_gpus)))
    return out


def assert_balanced(counter: Counter, n_gpus: int, total: int) -> None:
    counts = [counter.get(g, 0) for g in range(n_gpus)]
    assert max(counts) - min(counts) <= 1 and sum(counts) == total, counts


def test_two_arms_on_two_gpus_split_every_seed_and_balance_every_arm():
    overrides = ["epochs=10", "seed=0,1,2,3,4", "pruning=none,rmt"]
    jobs = placed(overrides, 2)
    assert [j[0]["pruning"] for j in jobs[:4]] == ["none", "rmt", "none", "rmt"]  # Hydra's order
    # the old rule, job k on GPU k mod 2, put every rmt job on GPU 1
    assert {k % 2 for k, (v, _) in enumerate(jobs) if v["pruning"] == "rmt"} == {1}
    by_seed: dict[str, set[int]] = {}
    for values, gpu in jobs:
        by_seed.setdefault(values["seed"], set()).add(gpu)
    assert all(gpus == {0, 1} for gpus in by_seed.values())
    for arm in ("none", "rmt"):
        assert_balanced(Counter(g for v, g in jobs if v["pruning"] == arm), 2, 5)
    assert_balanced(Counter(g for _, g in jobs), 2, 10)


@pytest.mark.parametrize("n_gpus", [2, 3, 4])
@pytest.mark.parametrize("overrides", [
    ["seed=0,1,2,3,4,5", "pruning=none,control,rmt"],
    ["pruning=none,control,rmt", "seed=0,1,2,3,4,5"],  # arms as the outer loop
    ["topology=784-100-10,784-200-10", "seed=0,1,2", "pruning=none,rmt"],
    ["seed=0,1,2,3", "pruning=none,rmt"],
    ["seed=0,1,2,3,4", "pruning=none,rmt"],
], ids=["arms-inner", "arms-outer", "with-topologies", "4-seeds", "5-seeds"])
def test_every_arm_is_spread_evenly_over_the_gpus(overrides, n_gpus):
    jobs = placed(overrides, n_gpus)
    arms = {v["pruning"] for v, _ in jobs}
    for arm in arms:
        gpus = Counter(g for v, g in jobs if v["pruning"] == arm)
        assert_balanced(gpus, n_gpus, sum(1 for v, _ in jobs if v["pruning"] == arm))
    assert_balanced(Counter(g for _, g in jobs), n_gpus, len(jobs))
    if len(arms) == 2:  # the two arms of one seed (and topology) never share a GPU
        groups: dict[tuple, list[int]] = {}
        for v, g in jobs:
            groups.setdefault(tuple(sorted((k, x) for k, x in v.items() if k != "pruning")), []).append(g)
        assert all(len(set(g)) == len(g) for g in groups.values())


def test_without_a_swept_arm_jobs_go_round_robin():
    overrides = ["pruning=rmt", "seed=0,1,2,3,4"]
    assert [gpu_for_job(k, overrides, 2) for k in range(5)] == [0, 1, 0, 1, 0]
    assert [gpu_for_job(k, overrides, 3) for k in range(5)] == [0, 1, 2, 0, 1]


def test_one_gpu_unknown_jobs_and_unreadable_overrides():
    assert gpu_for_job(7, ["seed=0,1", "pruning=none,rmt"], 1) == 0
    assert gpu_for_job(9, ["seed=0,1", "pruning=none,rmt"], 4) == 9 % 4  # past the sweep's last job
    assert gpu_for_job(5, ["seed=[0,1"], 2) == 1  # Hydra cannot parse it: round-robin


def test_sweep_overrides_are_read_from_hydras_multirun_yaml(tmp_path):
    (tmp_path / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    task:\n    - epochs=2\n    - seed=0,1\n    - pruning=none,rmt\n")
    assert sweep_overrides_of(tmp_path) == ["epochs=2", "seed=0,1", "pruning=none,rmt"]
    assert sweep_overrides_of(tmp_path / "missing") is None
