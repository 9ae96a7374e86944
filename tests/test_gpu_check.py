"""benchmarks/gpu_check.sh --dry-run: every stage of the prepared GPU check runs on the CPU, so the
script cannot rot between GPU runs."""

from __future__ import annotations

import json
import subprocess
import tarfile

import pytest
from conftest import REPO

STAGES = ["setup", "smoke", "cuda_tests", "throughput", "compile", "protocol"]


@pytest.mark.slow
def test_dry_run_runs_every_stage_and_reports_it(tmp_path):
    out = tmp_path / "out"
    # a budget used up at once, as on a busy machine: the dry run still runs every stage in its smallest form
    # (~2-3 minutes on 2 idle cores, more on a busy machine; a stage's limit only stops a hang)
    res = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out),
                          "--budget", "1"], capture_output=True, text=True, timeout=3000)
    summary = json.loads((out / "summary.json").read_text())
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == STAGES
    assert all(s["status"] == "ok" for s in stages.values()), [(s["stage"], s["status"], s["note"]) for s in
                                                              summary["stages"]]
    assert res.returncode == 0 and summary["all_ok"] and summary["dry_run"]
    checks = {k: v for k, v in summary["smoke"].items() if k != "run_seconds"}
    assert set(checks) == {"determinism", "arms_epoch1", "interrupt_resume", "resume_cpu_to_gpu", "resume_gpu_to_cpu",
                           "checkpoint_no_cuda", "prune", "cnn", "launchers"}
    assert all(c["ok"] for c in checks.values())
    assert summary["throughput"]["epoch_over_bound"] > 0 and summary["compile"]["epoch_s_compile"] > 0
    proto = summary["protocol"]
    assert proto["epochs"] >= 2 and len(proto["completed"]) == proto["jobs"] >= 2
    # what comes back from the GPU machine: at most 8 files, none in a sub-folder
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.is_file() for p in out.iterdir())
    with tarfile.open(out / "protocol_runs.tar.gz") as t:
        names = t.getnames()
    assert sum(n.endswith("/metrics.csv") for n in names) == proto["jobs"]
    log = (out / "gpu_check.log").read_text()
    assert all(f"stage {s}: ok" in log for s in STAGES) and "smoke determinism: ok" in log
