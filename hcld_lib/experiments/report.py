"""The report of an experiment: what its numbers are, Table II, the verdicts, the decoupling.

Every sentence is computed from the results on disk (never written in advance): the paper's
comparisons come from :mod:`hcld_lib.experiments.comparisons` (one verdict rule, with intervals),
the readings of the open points from :mod:`hcld_lib.experiments.readings`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hcld_lib.experiments.budgets import stability_headline
from hcld_lib.experiments.comparisons import (
    backbone_sentences,
    claim_sentences,
    claim_stability,
    claim_stability_sentences,
    claims_summary,
)
from hcld_lib.experiments.params import Experiment
from hcld_lib.experiments.readings import holding_readings
from hcld_lib.io import atomic_write_text, read_csv
from hcld_lib.method.variants import variant_label

_RERUN = "run the notebook that wrote it again (make reproduce)"


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
    if "emo_only" in card.index:
        base = card.loc["emo_only", "speaker_from_x_e_bacc"]
        parts = []
        for name in card.index.drop("emo_only"):
            d = 100 * (card.loc[name, "speaker_from_x_e_bacc"] - base)
            parts.append(f"{variant_label(str(name))} {abs(d):.1f} points "
                         f"{'less' if d < 0 else 'more'}")
        if parts:
            out.append("Speaker information in X_e against EMO-only (linear probe, balanced "
                       "accuracy, one fold): " + ", ".join(parts) + ".")
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
        note += (" The quick profile trains narrow models on a small corpus: differences of a "
                 "point or two are within noise unless their interval says otherwise.")
    return note


def convergence_note(runs: pd.DataFrame) -> str:
    """How many runs converged, and where they stopped and selected, in a sentence."""
    def spread(column: str) -> str:
        v = runs[column].dropna()
        return f"median {v.median():.0f}, range {v.min():.0f}-{v.max():.0f}"

    return (f"{int(runs['converged'].astype(bool).sum())} of {len(runs)} runs converged; epochs "
            f"trained {spread('epochs_trained')}; selected epochs {spread('selected_epoch')}.")


def grid_note(exp: Experiment, runs: pd.DataFrame | None = None) -> str:
    """How the grid's cells were made: selection, folds, seeds, how long they trained (and,
    given the grid's ``runs``, how many converged)."""
    n_folds = exp.run_settings.get("n_folds")
    note = (f"Ours: {len(exp.folds)} fold(s) of {n_folds} x {len(exp.seeds)} seed(s) "
            f"({', '.join(map(str, exp.seeds))}). {exp.budget_note()}")
    return note + (f" {convergence_note(runs)}" if runs is not None else "")


def budget_section(by_budget: pd.DataFrame, note: str) -> str:
    """The report's section on training budgets, from chapter 04's table of the paper's
    comparisons at each budget (:func:`hcld_lib.experiments.comparisons.claims_by_budget`)."""
    stable = claim_stability(by_budget)
    return "\n".join(["## Does the answer depend on how long we train?", "", note, "",
                      stability_headline(stable), "",
                      *(f"- {s}" for s in claim_stability_sentences(stable))])


def backbone_section(exp: Experiment) -> str | None:
    """The report's section on the second backbone, from chapter 04's table of the headline
    comparisons on each backbone (``04_backbones.csv``); ``None`` when chapter 04 ran none."""
    path = exp.results_dir / "04_backbones.csv"
    if not path.is_file():
        return None
    table = read_csv(path, what="chapter 04's backbone comparison", remedy=_RERUN)
    return "\n".join(["## Does the answer depend on the backbone?", "",
                      "The headline comparisons on the main backbone and on a real pretrained "
                      "speech encoder (chapter 04), the same folds and training.", "",
                      *(f"- {s}" for s in backbone_sentences(table))])


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
                 card: pd.DataFrame | None, readings_md: str | None = None,
                 budget_md: str | None = None, backbone_md: str | None = None) -> Path:
    """``report.md`` of the experiment: provenance, corpus note, Table II, the claim sentences,
    the same verdicts across training budgets and on a second backbone, the readings of the
    open points, the decoupling sentences, the other chapters' tables (06, 07), the figure
    list."""
    found = artifacts(exp.results_dir)
    extra = [t for t in found["tables"] if t.name.startswith(("06", "07"))]
    lines = [f"# HCLD companion report: {exp.name}\n\n_{exp.caption}_\n", corpus_note(exp), ""]
    if table2_md:
        lines += [table2_md.strip(), ""]
    lines += ["## What held and what did not", "", claims_summary(claims), ""]
    lines += [f"- {s}" for s in claim_sentences(claims)] + [""]
    if budget_md:
        lines += [budget_md.strip(), ""]
    if backbone_md:
        lines += [backbone_md.strip(), ""]
    if readings_md:
        lines += [readings_md.strip(), ""]
    if card is not None and not card.empty:
        lines += ["## Decoupling (test embeddings)", ""]
        lines += [f"- {s}" for s in decoupling_sentences(card)] + [""]
    for path in extra:
        lines += [path.read_text().strip(), ""]
    if found["figures"]:
        lines += ["## Figures", ""] + [f"- `{f.name}`" for f in found["figures"]] + [""]
    return atomic_write_text(exp.results_dir / "report.md", "\n".join(lines))


#: The stems of the tables the index reads: the paper's comparisons (chapter 09) and the readings
#: of the open points (chapter 08).
CLAIMS_TABLE = "09_claims"
READINGS_TABLE = "08_readings"


def write_index(results_root: str | os.PathLike) -> Path:
    """``results_root/index.md``: every experiment folder on disk with its headline numbers, so
    that two corpora can be compared side by side: HCLD vs EMO-only emotion UA per architecture
    (from its claims table) and the readings under which the paper's claims held (from its
    readings table); "–" where the chapter has not run."""
    root = Path(results_root)
    lines = ["# Experiments on disk", "",
             "| experiment | report | HCLD - EMO-only, emotion UA (points, 95 % CI, per arch) "
             "| readings under which the paper's claims held |",
             "| --- | --- | --- | --- |"]
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        headline, held = "–", "–"
        claims_csv = folder / f"{CLAIMS_TABLE}.csv"
        if claims_csv.is_file():
            claims = read_csv(claims_csv, what="a claims table", remedy=_RERUN)
            rows = claims[(claims["comparison"] == "HCLD vs EMO-only")
                          & (claims["metric"] == "emo_ua")]
            headline = "; ".join(f"{r.arch} {r.mean:+.1f} [{r.ci_low:+.1f}, {r.ci_high:+.1f}] "
                                 f"({r.verdict})"
                                 for r in rows.itertuples()) or "–"
        readings_csv = folder / f"{READINGS_TABLE}.csv"
        if readings_csv.is_file():
            held = ", ".join(holding_readings(read_csv(readings_csv, what="a readings table",
                                                       remedy=_RERUN))) or "none"
        report = f"[report]({folder.name}/report.md)" if (folder / "report.md").is_file() else "–"
        lines.append(f"| `{folder.name}` | {report} | {headline} | {held} |")
    return atomic_write_text(root / "index.md", "\n".join(lines) + "\n")
