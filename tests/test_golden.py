"""The safety net of every change: the committed results recompute exactly from the committed raw runs.

docs/results/<table>/ was written by benchmarks/report.sh from docs/results/runs/ (with its flags); recomputing each table
from those runs must give the same bytes, and every committed run's stored ``config_key`` must follow
from its stored config (so resume / skip_done / target_from keep finding them after any refactor).
"""

from __future__ import annotations

import json

import pytest
from conftest import REPO

RUNS = REPO / "docs" / "results" / "runs"
RESULTS = REPO / "docs" / "results"
# table folder -> the sweep folders report.sh compares into it (and whether it fine-tunes the post-hoc baseline)
TABLES = {
    "mnist_fc_1000_1000_1000_500_cpu": (["mnist_fc_1000_1000_1000_500_cpu"], True),
    "fashion_fc_1000_1000_1000_500_cpu": (["fashion_fc_1000_1000_1000_500_cpu"], True),
    "frontier_mnist": (["mnist_fc_1000_1000_1000_500_cpu", "frontier_mnist_horizon5",
                        "frontier_mnist_horizon5_target5", "frontier_mnist_horizon7",
                        "frontier_mnist_horizon7_target7", "frontier_mnist_oneshot"], False),
    # the verdict's sweeps (benchmarks/reproduce_verdict.sh), as many as are committed: report.sh's glob
    "verdict_mnist": (sorted(p.name for p in RUNS.glob("verdict_mnist_*")), False),
}
if any(RUNS.glob("long_fashion*")):  # the long regime, as far as it is committed
    TABLES["long_fashion"] = (sorted(p.name for p in RUNS.glob("long_fashion*")), False)
# the tables docs/results.md quotes: benchmarks/results_tables.py <mode> docs/results/<table>
REPORTED = [("verdict", "verdict_mnist"), ("frontier", "frontier_mnist"), ("main", "mnist_fc_1000_1000_1000_500_cpu"),
            ("main", "fashion_fc_1000_1000_1000_500_cpu")] + [("curves", "long_fashion"), ("verdict", "long_fashion")] * (
    "long_fashion" in TABLES)
SUMMARIES = sorted(RUNS.rglob("summary.json"))


def test_the_committed_runs_are_there():
    assert len(SUMMARIES) >= 119
    for table, (sweeps, _) in TABLES.items():
        assert (RESULTS / table / "comparison.csv").is_file(), table
        for sweep in sweeps:
            assert (RUNS / sweep).is_dir(), sweep


@pytest.mark.parametrize("table", sorted(TABLES))
def test_committed_tables_recompute_byte_identical(table, cli, tmp_path):
    sweeps, finetune = TABLES[table]
    out = tmp_path / "out"
    args = ["compare", *[str(RUNS / s) for s in sweeps], "--no-plots", "--format", "csv", "--out", str(out),
            "--equivalence", "0.3"]
    code, _, err = cli(*args, *(["--finetune"] if finetune else []))
    assert code == 0, err
    for name in ("comparison.csv", "frontier.csv", "curves.csv"):
        committed = RESULTS / table / name
        if committed.exists():
            assert (out / name).read_bytes() == committed.read_bytes(), f"{table}/{name} no longer recomputes"


@pytest.mark.parametrize("mode, table", REPORTED)
def test_the_report_quotes_the_committed_tables(mode: str, table: str) -> None:
    """Every row that results_tables.py prints from a committed table stands in docs/results.md as printed:
    adding runs moves means and Holm-adjusted p-values, and a table left as it was fails here."""
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("results_tables", REPO / "benchmarks" / "results_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    source = pd.read_csv(RESULTS / table / ("curves.csv" if mode == "curves" else "comparison.csv"))
    report = set((REPO / "docs" / "results.md").read_text().splitlines())
    missing = [row for row in tables.TABLES[mode](source) if row not in report]
    assert not missing, f"docs/results.md does not quote {len(missing)} rows of {mode} {table}, e.g. {missing[0]}"


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_committed_figure_belongs_to_a_group_of_its_table(table: str) -> None:
    """compare names a table's figures ``<slug(group)>_<kind>.png``; a figure of no group in comparison.csv is
    left over from an earlier grouping (report.sh removes compare's old output before it writes)."""
    import re

    import pandas as pd

    from rmtprune.report.compare import slug

    slugs = {slug(g) for g in pd.read_csv(RESULTS / table / "comparison.csv")["group"].unique()}
    pattern = "|".join(re.escape(s) for s in sorted(slugs))
    stale = [p.name for p in sorted((RESULTS / table).glob("*.png"))
             if not re.fullmatch(rf"({pattern})_(curves|params|frontier|esd_.+)\.png", p.name)]
    assert not stale, f"{table}: figures of no group in comparison.csv: {stale}"


def test_the_report_links_committed_files() -> None:
    import re

    report = (REPO / "docs" / "results.md").read_text()
    links = re.findall(r"\]\((results/[^)#\s]+)", report)
    assert any(link.endswith(".png") for link in links)
    missing = [link for link in links if not (REPO / "docs" / link).exists()]
    assert not missing, f"docs/results.md links files that are not there: {missing}"


@pytest.mark.slow
def test_every_committed_run_keeps_its_config_key():
    """The stored config as it was, and merged onto today's schema (every key added since, at its default):
    a new key left out of KEYS_SINCE / INERT_WHEN would change the second."""
    from omegaconf import OmegaConf

    from rmtprune.config.identity import config_key
    from rmtprune.config.schema import MODEL_SCHEMAS, RunConfig

    wrong = []
    for path in SUMMARIES:
        summary = json.loads(path.read_text())
        today = OmegaConf.structured(RunConfig)
        today.model = OmegaConf.structured(MODEL_SCHEMAS[summary["config"]["model"]["name"]])
        today = OmegaConf.merge(today, summary["config"])
        for config in (summary["config"], today):
            if config_key(config) != summary["config_key"]:
                wrong.append(str(path.relative_to(RUNS)))
    assert not wrong, f"{len(wrong)} committed runs changed identity, e.g. {wrong[:3]}"
