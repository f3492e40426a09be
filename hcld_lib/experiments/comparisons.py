"""The paper's comparisons on our runs, each with its interval and one verdict.

A comparison is variant ``a`` against variant ``b`` on one architecture (and, in the readings
grid, under one reading), on a metric of the runs table (percent). The numbers come from
:mod:`hcld_lib.analysis.stats`, the verdict rule from there too:

* ``mean``, ``ci_low``, ``ci_high``, ``n_pairs``, ``verdict``: the differences paired by
  (fold, seed) and their t-interval, judged against the sign of the paper's difference (for the
  comparisons beyond the paper, :data:`BEYOND_PAPER`, against ``a`` above ``b``);
* ``boot_low``, ``boot_high``, ``boot_items``: a paired bootstrap over the test utterances of the
  first seed, pooled across folds (the predictions saved with each run), for the metric
  (emotion UA or WA).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hcld_lib.analysis.embeddings import load_run_embeddings
from hcld_lib.analysis.stats import compare, paired_bootstrap, verdict_sentence
from hcld_lib.experiments import budgets as bd
from hcld_lib.experiments.tables import PAPER_TABLE
from hcld_lib.io import HcldError
from hcld_lib.method.variants import variant_label

COLUMNS: tuple[str, ...] = ("mean", "ci_low", "ci_high", "n_pairs", "verdict", "boot_low",
                            "boot_high", "boot_items")

#: The paper's comparisons (Table II): HCLD against each baseline and ablation; then the
#: decoupling baselines beyond the paper, each against EMO-only (speaker-invariant training
#: should help emotion) and HCLD against each (the paper's claim to beat the standard tools).
CLAIMS: tuple[tuple[str, str], ...] = (
    ("hcld", "emo_only"),
    ("hcld", "orth"),
    ("hcld", "hcld_wo_supcon"),
    ("hcld", "hcld_wo_lcl"),
    ("adversarial", "emo_only"),
    ("mi", "emo_only"),
    ("hcld", "adversarial"),
    ("hcld", "mi"),
)

#: The comparisons the paper prints no numbers for: the expected direction is ``a`` above ``b``.
BEYOND_PAPER: frozenset[tuple[str, str]] = frozenset(CLAIMS[4:])

METRIC_NAMES: dict[str, str] = {"emo_wa": "emotion WA", "emo_ua": "emotion UA",
                                "spk_wa": "speaker WA", "spk_ua": "speaker UA"}


def paper_difference(a: str, b: str, arch: str, metric: str = "emo_ua") -> float:
    """The paper's ``metric(a) - metric(b)`` in Table II (points; NaN when not printed)."""
    t = PAPER_TABLE.set_index(["variant", "arch"])
    try:
        return float(t.loc[(a, arch), metric] - t.loc[(b, arch), metric])
    except KeyError:
        return math.nan


def bootstrap_runs(runs: pd.DataFrame, a: str, b: str, metric: str = "emo_ua",
                   where: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The paired bootstrap of ``a - b`` over the test utterances of the first seed that both
    have, pooled across folds; ``runs`` needs ``run_dir``, ``variant``, ``fold``, ``seed``.
    Emotion metrics only (the runs save their predicted emotions); NaN otherwise."""
    nan = {"boot_low": math.nan, "boot_high": math.nan, "boot_items": 0}
    if metric not in ("emo_ua", "emo_wa") or "run_dir" not in runs:
        return nan
    sel = runs
    for key, value in (where or {}).items():
        sel = sel[sel[key] == value]
    side = {v: sel[sel["variant"] == v].set_index(["seed", "fold"])["run_dir"] for v in (a, b)}
    keys = sorted(set(side[a].index) & set(side[b].index))
    if not keys:
        return nan
    seed = keys[0][0]
    parts: dict[str, list[np.ndarray]] = {"a": [], "b": [], "y": []}
    for key in (k for k in keys if k[0] == seed):
        run_a, run_b = (load_run_embeddings(side[v][key]) for v in (a, b))
        if run_a.emotion_pred is None or run_b.emotion_pred is None:
            return nan
        if not np.array_equal(run_a.utterance_id, run_b.utterance_id):
            raise HcldError(f"{side[a][key]} and {side[b][key]} were tested on different "
                            "utterances; they cannot be paired")
        parts["a"].append(run_a.emotion_pred)
        parts["b"].append(run_b.emotion_pred)
        parts["y"].append(run_a.emotion)
    boot = paired_bootstrap(*(np.concatenate(parts[k]) for k in ("a", "b", "y")),
                            metric=metric.removeprefix("emo_"), seed=int(seed))
    return {"boot_low": boot["ci_low"], "boot_high": boot["ci_high"],
            "boot_items": boot["n_items"]}


def compare_runs(runs: pd.DataFrame, a: str, b: str, metric: str, paper_diff: float,
                 where: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One comparison: the columns of :data:`COLUMNS` (the module docstring)."""
    result = compare(runs, a, b, metric, paper_diff, where=where)
    return {**result, **bootstrap_runs(runs, a, b, metric, where)}


def claims_table(runs: pd.DataFrame, metrics: Sequence[str] = ("emo_ua", "emo_wa"),
                 claims: Sequence[tuple[str, str]] = CLAIMS) -> pd.DataFrame:
    """Every paper comparison x architecture x metric that our runs cover (both variants run on
    that architecture), one row each: ``comparison, a, b, arch, metric, paper`` and
    :data:`COLUMNS`."""
    rows = []
    on = {v: set(runs.loc[runs["variant"] == v, "arch"]) for v in dict.fromkeys(runs["variant"])}
    for a, b in claims:
        if a not in on or b not in on:
            continue
        for arch in [x for x in dict.fromkeys(runs["arch"]) if x in on[a] & on[b]]:
            for metric in metrics:
                paper = paper_difference(a, b, arch, metric)
                expected = 1.0 if (a, b) in BEYOND_PAPER else paper
                rows.append({"comparison": f"{variant_label(a)} vs {variant_label(b)}",
                             "a": a, "b": b, "arch": arch, "metric": metric, "paper": paper,
                             **compare_runs(runs, a, b, metric, expected,
                                            where={"arch": arch})})
    return pd.DataFrame(rows, columns=["comparison", "a", "b", "arch", "metric", "paper",
                                       *COLUMNS])


def claim_sentences(claims: pd.DataFrame) -> list[str]:
    """One sentence per row of :func:`claims_table` (the rule's wording, the paper beside)."""
    out = []
    for r in claims.to_dict("records"):
        label = f"{r['comparison']}, {METRIC_NAMES.get(r['metric'], r['metric'])} ({r['arch']})"
        text = verdict_sentence(label, r, unit="points")
        paper = "n/a" if math.isnan(r["paper"]) else f"{r['paper']:+.1f}"
        boot = ("" if not r["boot_items"] else
                f" Bootstrap over {int(r['boot_items'])} test utterances: "
                f"[{r['boot_low']:+.1f}, {r['boot_high']:+.1f}].")
        out.append(f"{text[:-1]} (paper {paper}).{boot}")
    return out


def claims_summary(claims: pd.DataFrame) -> str:
    """How many comparisons held, were contradicted, were not shown, or had too few runs."""
    if claims.empty:
        return "No paper comparison could be made: the runs hold no pair of variants to compare."
    n = int(claims["n_pairs"].max()) if len(claims) else 0
    beyond = claims.apply(lambda r: (r["a"], r["b"]) in BEYOND_PAPER, axis=1)
    out = []
    for part, label in ((claims[~beyond], "comparisons with the paper's Table II"),
                        (claims[beyond], "comparisons with the decoupling baselines beyond the "
                                         "paper (expected: the decoupling method above)")):
        if part.empty:
            continue
        counts = part["verdict"].value_counts()
        verdicts = [f"{int(counts.get(v, 0))} {v}" for v in ("held", "contradicted",
                                                             "not shown", "too few runs")]
        out.append(f"Of {len(part)} {label}: " + ", ".join(verdicts) + ".")
    return " ".join(out) + f" (95 % intervals over up to {n} (fold, seed) pairs.)"


def claims_by_budget(budgeted: pd.DataFrame, metrics: Sequence[str] = ("emo_ua",)
                     ) -> pd.DataFrame:
    """:func:`claims_table` at every budget of ``budgeted`` (:func:`budgets.budget_runs
    <hcld_lib.experiments.budgets.budget_runs>`), with ``budget`` and ``converged_share`` (of the
    two variants' runs on the row's architecture)."""
    return bd.by_budget(budgeted, lambda runs: claims_table(runs, metrics),
                        lambda runs, row: bd.converged_share(runs, [row["a"], row["b"]],
                                                             {"arch": row["arch"]}))


def claim_stability(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`budgets.stability <hcld_lib.experiments.budgets.stability>` of a
    :func:`claims_by_budget` table, one row per comparison x architecture x metric."""
    return bd.stability(table, ["comparison", "arch", "metric"])


def claim_stability_sentences(stable: pd.DataFrame) -> list[str]:
    """One sentence per row of :func:`claim_stability`."""
    return bd.stability_sentences(
        stable, lambda r: f"{r['comparison']}, {METRIC_NAMES.get(r['metric'], r['metric'])} "
                          f"({r['arch']})")


#: The comparisons repeated on a second backbone: HCLD against the paper's two baselines.
HEADLINE: tuple[tuple[str, str], ...] = (("hcld", "emo_only"), ("hcld", "orth"))


def claims_by_backbone(runs: Mapping[str, pd.DataFrame],
                       claims: Sequence[tuple[str, str]] = HEADLINE) -> pd.DataFrame:
    """:func:`claims_table` (emotion UA) of each backbone's runs (``{backbone: runs}``), on the
    architectures and variants they share, stacked with columns ``backbone`` and
    ``converged_share``."""
    archs = set.intersection(*(set(r["arch"]) for r in runs.values()))
    variants = set.intersection(*(set(r["variant"]) for r in runs.values()))
    parts = []
    for backbone, r in runs.items():
        r = r[r["arch"].isin(archs) & r["variant"].isin(variants)]
        table = claims_table(r, ("emo_ua",), claims)
        shares = [bd.converged_share(r, [row["a"], row["b"]], {"arch": row["arch"]})
                  for row in table.to_dict("records")]
        parts.append(table.assign(backbone=backbone, converged_share=shares))
    return pd.concat(parts, ignore_index=True)


def backbone_sentences(table: pd.DataFrame) -> list[str]:
    """Per comparison x architecture of a :func:`claims_by_backbone` table: its verdict on each
    backbone, and whether the answer changes with the backbone."""
    lines = []
    for (comparison, arch), sub in table.groupby(["comparison", "arch"], sort=False):
        parts = [f"{r['verdict']} on {r['backbone']} ({r['mean']:+.1f} points, 95 % CI "
                 f"[{r['ci_low']:+.1f}, {r['ci_high']:+.1f}], {int(r['n_pairs'])} pairs, "
                 f"{100 * r['converged_share']:.0f} % of runs converged)"
                 for r in sub.to_dict("records")]
        same = sub["verdict"].nunique() == 1
        lines.append(f"{comparison}, emotion UA ({arch}): " + "; ".join(parts) + (
            ": the same verdict on every backbone." if same else
            ": the verdict changes with the backbone."))
    return lines
