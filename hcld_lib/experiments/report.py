"""Sentences of the report, computed from the results (never written in advance).

Each comparison is paired by fold: for variants A and B of one architecture the difference
A - B is taken fold by fold (same split, same seed), then averaged. A claim of the paper
"held" when our mean difference has the paper's sign and is larger than its spread over folds;
it "did not hold" when the sign is opposite and larger than the spread; otherwise it is
"inconclusive" at this number of folds.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hcld_lib.experiments.params import Experiment
from hcld_lib.experiments.tables import PAPER_TABLE
from hcld_lib.io import atomic_write_text
from hcld_lib.method.variants import ARCHS, variant_label

METRIC_NAMES: dict[str, str] = {
    "emo_wa": "emotion WA",
    "emo_ua": "emotion UA",
    "spk_wa": "speaker WA",
    "spk_ua": "speaker UA",
}

#: The paper's comparisons (Table II): HCLD against each baseline and ablation.
CLAIMS: tuple[tuple[str, str], ...] = (
    ("hcld", "emo_only"),
    ("hcld", "orth"),
    ("hcld", "hcld_wo_supcon"),
    ("hcld", "hcld_wo_lcl"),
)


def paired_difference(
    df: pd.DataFrame, a: str, b: str, arch: str, metric: str = "emo_ua"
) -> dict[str, float]:
    """Fold-paired ``metric`` difference A - B (points) for one architecture.

    Returns ``dict(mean, std, n)`` over the folds both variants finished (``std`` NaN when one).
    """
    def per_fold(variant: str) -> pd.Series:
        sub = df[(df["variant"] == variant) & (df["arch"] == arch)]
        if "train_fraction" in sub:
            sub = sub[sub["train_fraction"].fillna(1.0) >= 1.0]
        return sub.groupby("fold")[metric].mean()

    diff = (per_fold(a) - per_fold(b)).dropna()
    n = int(len(diff))
    return {
        "mean": float(diff.mean()) if n else math.nan,
        "std": float(diff.std(ddof=1)) if n > 1 else math.nan,
        "n": n,
    }


def paper_difference(a: str, b: str, arch: str, metric: str = "emo_ua") -> float:
    """The same difference in the paper's Table II (points; NaN when not printed)."""
    t = PAPER_TABLE.set_index(["variant", "arch"])
    try:
        return float(t.loc[(a, arch), metric] - t.loc[(b, arch), metric])
    except KeyError:
        return math.nan


def verdict(ours: float, spread: float, paper: float) -> str:
    """``"held"``, ``"did not hold"`` or ``"inconclusive"`` (see the module docstring)."""
    if math.isnan(ours) or math.isnan(paper):
        return "not comparable"
    noise = 0.0 if math.isnan(spread) else spread
    if abs(ours) <= noise or ours == 0:
        return "inconclusive"
    return "held" if np.sign(ours) == np.sign(paper) else "did not hold"


def claims_table(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("emo_ua", "emo_wa"),
    claims: Sequence[tuple[str, str]] = CLAIMS,
) -> pd.DataFrame:
    """Every paper comparison x architecture x metric that our runs cover, one row each:
    ``comparison``, ``arch``, ``metric``, ``ours_mean``, ``ours_std``, ``folds``, ``paper``,
    ``verdict``."""
    rows = []
    for a, b in claims:
        present = list(dict.fromkeys(df["arch"]))
        for arch in [a for a in ARCHS if a in present] + [a for a in present if a not in ARCHS]:
            for metric in metrics:
                d = paired_difference(df, a, b, arch, metric)
                if d["n"] == 0:
                    continue
                paper = paper_difference(a, b, arch, metric)
                rows.append({
                    "comparison": f"{variant_label(a)} vs {variant_label(b)}",
                    "arch": arch,
                    "metric": metric,
                    "ours_mean": d["mean"],
                    "ours_std": d["std"],
                    "folds": d["n"],
                    "paper": paper,
                    "verdict": verdict(d["mean"], d["std"], paper),
                })
    return pd.DataFrame(rows, columns=["comparison", "arch", "metric", "ours_mean", "ours_std",
                                       "folds", "paper", "verdict"])


def _signed(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.1f}"


def claim_sentences(claims: pd.DataFrame) -> list[str]:
    """One sentence per row of :func:`claims_table`, e.g.
    ``"HCLD vs EMO-only, emotion UA (cnn): +2.1 ± 0.8 points over 2 folds (paper +4.5): held."``"""
    out = []
    for r in claims.itertuples(index=False):
        spread = "" if math.isnan(r.ours_std) else f" ± {r.ours_std:.1f}"
        out.append(
            f"{r.comparison}, {METRIC_NAMES.get(r.metric, r.metric)} ({r.arch}): "
            f"{_signed(r.ours_mean)}{spread} points over {r.folds} fold(s) "
            f"(paper {_signed(r.paper)}): {r.verdict}."
        )
    return out


def claims_summary(claims: pd.DataFrame) -> str:
    """How many comparisons held, did not hold, or were inconclusive."""
    if claims.empty:
        return "No paper comparison could be made: the grid has no pair of variants to compare."
    counts = claims["verdict"].value_counts()
    parts = [f"{int(counts.get(v, 0))} {v}" for v in ("held", "did not hold", "inconclusive")]
    return (f"Of {len(claims)} fold-paired comparisons with the paper's Table II: "
            + ", ".join(parts) + ".")


def decoupling_sentences(card: pd.DataFrame) -> list[str]:
    """Sentences on the decoupling scorecard (index = variant names), read against chance:
    how much speaker is left in X_e and how much emotion in X_s, per variant."""
    out = []
    if card.empty:
        return out
    first = card.iloc[0]
    spk_chance = 100 * float(first.get("speaker_chance_balanced", math.nan))
    emo_chance = 100 * float(first.get("emotion_chance_balanced", math.nan))
    for name, r in card.iterrows():
        label = variant_label(str(name))
        s = (f"{label}: speaker is read from X_e at {100 * r['speaker_from_x_e_bacc']:.1f} % "
             f"balanced accuracy (chance {spk_chance:.1f} %), emotion from X_e at "
             f"{100 * r['emotion_from_x_e_bacc']:.1f} %")
        if not math.isnan(float(r.get("emotion_from_x_s_bacc", math.nan))):
            s += (f"; emotion is read from X_s at {100 * r['emotion_from_x_s_bacc']:.1f} % "
                  f"(chance {emo_chance:.1f} %), speaker from X_s at "
                  f"{100 * r['speaker_from_x_s_bacc']:.1f} %")
        else:
            s += "; no speaker branch"
        out.append(s + ".")
    if {"hcld", "emo_only"} <= set(card.index):
        d = 100 * (card.loc["hcld", "speaker_from_x_e_bacc"]
                   - card.loc["emo_only", "speaker_from_x_e_bacc"])
        direction = "less" if d < 0 else "more"
        out.append(f"Speaker information in X_e: HCLD leaves {abs(d):.1f} points {direction} "
                   "than EMO-only (linear probe, balanced accuracy).")
    if {"hcld", "orth"} <= set(card.index) and "emotion_from_x_s_bacc" in card:
        d = 100 * (card.loc["hcld", "emotion_from_x_s_bacc"]
                   - card.loc["orth", "emotion_from_x_s_bacc"])
        direction = "less" if d < 0 else "more"
        out.append(f"Emotion information in X_s: HCLD leaves {abs(d):.1f} points {direction} "
                   "than orth.")
    return out


def corpus_note(exp: Experiment) -> str:
    """What the numbers are (and are not) comparable to, given the corpus and protocol."""
    if exp.dataset == "synthetic":
        note = ("These numbers come from the embedded synthetic corpus "
                f"({exp.corpus_name}), not from IEMOCAP: they test that the pipeline and "
                "the losses behave, and are not comparable to the paper's IEMOCAP numbers.")
    else:
        note = (f"Corpus {exp.corpus_name}, backbone {exp.backbone}. The paper "
                "used IEMOCAP with frozen HuBERT-base features.")
    if exp.protocol == "paper":
        note += (" Protocol 'paper' (stratified folds over all utterances) puts every speaker in "
                 "train and test, as the paper's random 80/20 split did; it flatters emotion "
                 "accuracy compared with leave-one-session-out.")
    else:
        note += (" Protocol 'loso' (leave-one-session-out) tests on unseen speakers, the field's "
                 "standard; the paper's random split is easier, so lower numbers are expected.")
    if exp.profile == "quick":
        note += (" The quick profile trains narrow models for a few epochs: differences of a "
                 "point or two are within noise unless their interval says otherwise.")
    return note


def grid_note(exp: Experiment) -> str:
    """How the grid's cells were made: selection, folds, seeds, epochs."""
    n_folds = exp.run_settings.get("n_folds")
    return (f"Ours: the epoch with the best validation emotion UA of each run; "
            f"{len(exp.folds)} fold(s) of {n_folds} x {len(exp.seeds)} seed(s) "
            f"({', '.join(map(str, exp.seeds))}); {exp.run_settings.get('epochs')} epochs.")


def artifacts(folder: str | os.PathLike, prefixes: Sequence[str] = ()) -> dict[str, list[Path]]:
    """Figures (``*.png``) and Markdown tables (``*.md``, not ``report.md``) in ``folder``, sorted,
    optionally only those whose name starts with one of ``prefixes`` (e.g. ``("06", "07")``)."""
    folder = Path(folder)

    def pick(pattern: str) -> list[Path]:
        paths = sorted(folder.glob(pattern)) if folder.is_dir() else []
        return [p for p in paths if p.name != "report.md"
                and (not prefixes or p.name.startswith(tuple(prefixes)))]

    return {"figures": pick("*.png"), "tables": pick("*.md")}


def write_report(exp: Experiment, table2_md: str | None, claims: pd.DataFrame,
                 card: pd.DataFrame | None) -> Path:
    """``report.md`` of the experiment: provenance, corpus note, Table II, the claim sentences,
    the decoupling sentences, the other chapters' tables (06, 07), the figure list."""
    found = artifacts(exp.results_dir)
    extra = [t for t in found["tables"] if t.name.startswith(("06", "07"))]
    lines = [f"# HCLD companion report: {exp.name}\n\n_{exp.caption}_\n", corpus_note(exp), ""]
    if table2_md:
        lines += [table2_md.strip(), ""]
    lines += ["## What held and what did not", "", claims_summary(claims), ""]
    lines += [f"- {s}" for s in claim_sentences(claims)] + [""]
    if card is not None and not card.empty:
        lines += ["## Decoupling (test embeddings)", ""]
        lines += [f"- {s}" for s in decoupling_sentences(card)] + [""]
    for path in extra:
        lines += [path.read_text().strip(), ""]
    if found["figures"]:
        lines += ["## Figures", ""] + [f"- `{f.name}`" for f in found["figures"]] + [""]
    return atomic_write_text(exp.results_dir / "report.md", "\n".join(lines))


def write_index(results_root: str | os.PathLike) -> Path:
    """``results_root/index.md``: every experiment folder on disk with its headline numbers
    (from its ``08_claims.csv``: HCLD vs EMO-only emotion UA per architecture), so that two
    corpora can be compared side by side."""
    root = Path(results_root)
    lines = ["# Experiments on disk", "",
             "| experiment | report | HCLD - EMO-only, emotion UA (points, per arch) |",
             "| --- | --- | --- |"]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        claims_csv = folder / "08_claims.csv"
        headline = "–"
        if claims_csv.is_file():
            claims = pd.read_csv(claims_csv)
            rows = claims[(claims["comparison"] == "HCLD vs EMO-only")
                          & (claims["metric"] == "emo_ua")]
            headline = "; ".join(f"{r.arch} {r.ours_mean:+.1f} ({r.verdict})"
                                 for r in rows.itertuples()) or "–"
        report = f"[report]({folder.name}/report.md)" if (folder / "report.md").is_file() else "–"
        lines.append(f"| `{folder.name}` | {report} | {headline} |")
    return atomic_write_text(root / "index.md", "\n".join(lines) + "\n")
