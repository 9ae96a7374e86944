"""Figures from files: accuracy curves (mean ± std over seeds, with the drop at each pruning event),
parameter counts, the accuracy–size frontier, and the ESD of a layer with its fitted MP density.
Everything is drawn with the non-interactive Agg backend."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from rmtprune.rmt import mp_pdf  # noqa: E402
from rmtprune.runs.folder import read_spectra  # noqa: E402
from rmtprune.runs.targets import BASELINES  # noqa: E402

matplotlib.use("Agg")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def group_figures(curves: pd.DataFrame, group: str, prefix: Path, metric: str = "test_acc") -> list[Path]:
    """``<prefix>_curves.png`` (test and train accuracy, mean ± std per arm) and ``<prefix>_params.png``."""
    if curves.empty:
        return []
    out = []
    base = metric.replace("test_", "").replace("train_", "")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (arm, part) in enumerate(curves.groupby("arm", sort=False)):
        color = f"C{i}"
        for split, style in (("test", "-"), ("train", "--")):
            col = f"{split}_{base}"
            if f"{col}_mean" not in part:
                continue
            m, s = part[f"{col}_mean"].to_numpy(), part[f"{col}_std"].fillna(0).to_numpy()
            n = int(part["n"].max())
            ax.plot(part["epoch"], m, style, color=color, label=f"{arm} {split} (n={n})")
            if split == "test":
                ax.fill_between(part["epoch"], m - s, m + s, color=color, alpha=0.2)
                _event_drops(ax, part, col, color)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{base} (mean ± std over seeds)")
    ax.set_title(textwrap.fill(group, 90), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.append(_save(fig, Path(f"{prefix}_curves.png")))

    if "n_params_after_mean" in curves:
        fig, ax = plt.subplots(figsize=(7, 4))
        for i, (arm, part) in enumerate(curves.groupby("arm", sort=False)):
            ax.plot(part["epoch"], part["n_params_after_mean"], marker="o", ms=3, color=f"C{i}", label=arm)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("parameters after the epoch's pruning (mean)")
        ax.set_title(textwrap.fill(f"parameter count: {group}", 90), fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        out.append(_save(fig, Path(f"{prefix}_params.png")))
    return out


def _event_drops(ax: Any, part: pd.DataFrame, col: str, color: str) -> None:
    """At each event epoch, a line from the epoch's value (before the event) to the value right after
    it (``<col>_after_event_mean``, before retraining), ending in a marker."""
    after = f"{col}_after_event_mean"
    if after not in part or not part[after].notna().any():
        return
    ev = part[part[after].notna()]
    for epoch, before, value in zip(ev["epoch"], ev[f"{col}_mean"], ev[after]):
        ax.plot([epoch, epoch], [before, value], ":", color=color, lw=1)
    ax.plot(ev["epoch"], ev[after], "v", color=color, ms=4, ls="none",
            label=f"{part['arm'].iloc[0]} right after each event")


def frontier_panels(rows: pd.DataFrame) -> list[tuple[str, pd.Series, pd.Series]]:
    """(x label, x, x error) of each panel of the frontier figure: the final parameter count always; the
    final model's bytes (an arm that records CSR bytes, i.e. magnitude, at the smaller of dense and CSR)
    and its CPU latency at batch 256 relative to the dense model where some arm records them (runs made
    before costs were recorded have neither)."""
    none = pd.Series(0.0, index=rows.index)
    panels = [("final parameter count (mean over seeds, log scale)", rows["params_mean"], rows["params_std"].fillna(0))]
    if rows.get("model_bytes_mean", none * np.nan).notna().any():
        csr = rows.get("model_bytes_csr_mean", none * np.nan)
        panels.append(("final model bytes (mean; magnitude as CSR where smaller; log scale)",
                       pd.Series(np.fmin(rows["model_bytes_mean"], csr), index=rows.index), none))
    if rows.get("latency_b256_ratio_mean", none * np.nan).notna().any():
        panels.append(("CPU latency at batch 256 / dense model (mean; log scale)", rows["latency_b256_ratio_mean"],
                       none))
    return panels


def frontier_figure(rows: pd.DataFrame, group: str, path: Path) -> Path:
    """Final test accuracy (mean ± std over seeds) against final parameter count (mean ± std, log x), and,
    where the runs record them, against bytes and relative latency (:func:`frontier_panels`, one panel
    each, shared y): one curve per ``series`` of frontier.csv (rmt's settings along one curve, each
    baseline variant along another), a point per setting; ``none`` and ``control`` as horizontal bands
    (mean ± std). ``rows``: the group's rows of frontier.csv."""
    panels = frontier_panels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(7 + 5.5 * (len(panels) - 1), 4.5), sharey=True, squeeze=False)
    bands = rows[rows["pruning_method"].isin(["none", "control"])]
    points = rows[~rows["pruning_method"].isin(["none", "control"])]
    series = points["series"] if "series" in points else points["pruning_method"]
    for ax, (xlabel, x, xerr) in zip(axes[0], panels):
        for i, (_, r) in enumerate(bands.iterrows()):
            color = "k" if r["pruning_method"] == "none" else "0.45"
            m, s = 100 * r["acc_mean"], 100 * (r["acc_std"] if r["acc_std"] == r["acc_std"] else 0.0)
            ax.axhspan(m - s, m + s, color=color, alpha=0.12)
            ax.axhline(m, color=color, ls="--" if i == 0 else ":", lw=1,
                       label=f"{r['arm']} (n={int(r['n_seeds'])}, {r['params_mean']:,.0f} params)")
        for i, (name, part) in enumerate(points.groupby(series, sort=False)):
            part = part.loc[x[part.index].sort_values().index]
            px = x[part.index]
            ax.errorbar(px, 100 * part["acc_mean"], yerr=100 * part["acc_std"].fillna(0), xerr=xerr[part.index],
                        fmt="o-", color=f"C{i}", ms=5, capsize=3, label=name)
            for (_, r), xv in zip(part.iterrows(), px):
                # a matched baseline sits at the count of the point it matches: only that point is named
                if isinstance(r["setting"], str) and r["setting"] and r["pruning_method"] not in BASELINES:
                    ax.annotate(textwrap.shorten(r["setting"], 40), (xv, 100 * r["acc_mean"]),
                                textcoords="offset points", xytext=(4, 4), fontsize=7, color=f"C{i}")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("final test accuracy (%), mean ± std")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(textwrap.fill(f"accuracy vs size and cost: {group}", 90 * len(panels)), fontsize=9)
    return _save(fig, path)


def esd_plot(ax: Any, singular_values: np.ndarray, shape: tuple[int, int], sigma2: float, lambda_plus: float,
             fit_error: float, n_censored: int = 0, title: str = "", n_bulk: int | None = None) -> None:
    """Histogram of eigenvalues s^2 / n with the MP density of the fit and the edge lambda_+.

    The fit (rmt.fit) describes the p_b = ``n_bulk`` values below the k = p - p_b values it left out as
    spikes: mu = s^2 / (n - k) ~ MP(gamma_b = p_b / (n - k), sigma2). On the lambda = s^2 / n axis, as a
    share of all p values, that density is (p_b / p) f_MP(x n / (n - k); gamma_b, sigma2) n / (n - k).
    """
    p, n = min(shape), max(shape)
    p_b = p if n_bulk is None or n_bulk != n_bulk or not 0 < int(n_bulk) <= p else int(n_bulk)
    k = p - p_b
    scale = n / (n - k)
    s = np.sort(np.asarray(singular_values, dtype=float))[::-1]
    lam = s[: p - n_censored] ** 2 / n
    spikes = lam[lam > lambda_plus]
    bulk = lam[lam <= lambda_plus]
    top = max(lambda_plus * 1.3, float(bulk.max()) if bulk.size else lambda_plus)
    bins = 60
    width = top / bins
    # weights 1 / (p * width): the bars integrate to each value's share of all p, like the MP density
    heights, _, _ = ax.hist(bulk, bins=bins, range=(0, top), weights=np.full(bulk.size, 1.0 / (p * width)),
                            color="C0", alpha=0.6, label=f"eigenvalues s²/n ({bulk.size} in bulk)")
    xs = np.linspace(top / 2000, top, 800)
    density = (p_b / p) * mp_pdf(xs * scale, p_b / (n - k), sigma2) * scale
    ax.plot(xs, density, "C3", label=f"MP fit σ²={sigma2:.3g}")
    # at gamma = 1 the density diverges at 0: scale the axis to the histogram, not to the pole
    cap = max(float(np.max(heights)) if len(heights) else 0.0, float(np.median(density[density > 0])) * 2
              if np.any(density > 0) else 0.0)
    if cap > 0:
        ax.set_ylim(0, cap * 1.35)
    ax.axvline(lambda_plus, color="k", ls="--", lw=1, label=f"edge λ+={lambda_plus:.3g}")
    if spikes.size:
        ax.annotate(f"{spikes.size} spike(s) up to {spikes.max():.3g} →", xy=(0.98, 0.6), xycoords="axes fraction",
                    ha="right", fontsize=8)
    if n_censored:
        ax.annotate(f"{n_censored} pruned (zero) values not shown", xy=(0.98, 0.52), xycoords="axes fraction",
                    ha="right", fontsize=8)
    ax.set_xlabel("eigenvalue λ = s²/n")
    ax.set_ylabel("density")
    ax.set_title(f"{title}\nfit error {fit_error:.4f}", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")


def esd_figures(arms: dict[str, list[Any]], prefix: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """For the first arm that fitted the MP law (layers.csv has a σ²: rmt, not the baselines, whose
    spectra have no fit to draw) and its lowest seed with spectra: each fitted layer at its first and
    last pruning event (``<prefix>_esd_<layer>.png``). Returns the figures and warnings (a run whose
    spectra or ledger cannot be drawn is skipped, and the next one tried)."""
    warnings = []
    for arm, runs in arms.items():
        if arm in ("none", "control"):
            continue
        for run in runs:
            if run.spectra_path is None or run.ledger is None or not _fitted(run.ledger):
                continue
            try:
                return _run_esd(run, arm, prefix), warnings
            except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
                warnings.append({"folder": str(run.folder), "reason": f"no ESD figure: spectra.npz or layers.csv "
                                 f"cannot be drawn ({type(exc).__name__}: {exc})"[:300]})
    return [], warnings


def _fitted(ledger: pd.DataFrame) -> bool:
    return "sigma2" in ledger and bool(pd.to_numeric(ledger["sigma2"], errors="coerce").notna().any())


def _run_esd(run: Any, arm: str, prefix: Path) -> list[Path]:
    spectra = read_spectra(run.spectra_path)
    ledger = run.ledger
    out = []
    layers = sorted({layer for ev in spectra.values() for layer in ev})
    for layer in layers:
        epochs = sorted(e for e, ev in spectra.items() if layer in ev)
        picks = [epochs[0]] if len(epochs) == 1 else [epochs[0], epochs[-1]]
        fig, axes = plt.subplots(1, len(picks), figsize=(5.5 * len(picks), 4), squeeze=False)
        for ax, epoch in zip(axes[0], picks):
            rows = ledger[(ledger["epoch"] == epoch) & (ledger["layer"] == layer)]
            if rows.empty:
                raise ValueError(f"layers.csv has no row for {layer} at epoch {epoch}")
            row = rows.iloc[0]
            esd_plot(ax, spectra[epoch][layer], (int(row["out"]), int(row["in"])), float(row["sigma2"]),
                     float(row["lambda_plus"]), float(row["fit_error"]), int(row["n_censored"] or 0),
                     n_bulk=row.get("n_bulk"), title=f"{layer} {int(row['out'])}x{int(row['in'])}, epoch {epoch} ({arm}, seed {run.seed}): "
                           f"{row['action']} {int(row['rank_before'])}→{int(row['rank_after'])}")
        out.append(_save(fig, Path(f"{prefix}_esd_{layer.replace('.', '_')}.png")))
    return out


def inspect_figures(rows: list[dict[str, Any]], spectra: dict[str, np.ndarray], out: Path) -> list[Path]:
    """One ESD figure per fitted layer of ``rmtprune inspect``: ``esd_<layer>.png``."""
    paths = []
    for r in rows:
        layer = r["layer"]
        if layer not in spectra or r.get("sigma2") is None or r["sigma2"] != r["sigma2"]:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        esd_plot(ax, spectra[layer], (int(r["out"]), int(r["in"])), float(r["sigma2"]), float(r["lambda_plus"]),
                 float(r["fit_error"]), int(r.get("n_censored") or 0), n_bulk=r.get("n_bulk"),
                 title=f"{layer} {r['out']}x{r['in']}: {r['n_spikes']} spikes, "
                       f"{'good' if r['good_fit'] else 'bad'} fit at tolerance {r['tolerance']}")
        paths.append(_save(fig, out / f"esd_{layer.replace('.', '_')}.png"))
    return paths
