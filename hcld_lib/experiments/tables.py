"""Tables of the runs: one row per run, the paper's Table II beside ours, Markdown and CSV.

:func:`metrics_row` flattens a run's ``metrics.json``, :func:`summary_table` gives mean ± std
over folds and seeds per variant x architecture in the layout of the paper's Table II, and
:func:`side_by_side` puts the paper's numbers (:data:`PAPER_TABLE`) beside ours, naming the
protocol, profile, corpus and backbone. Accuracies here are in percent.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcld_lib.analysis.stats import t_half_width
from hcld_lib.data.labels import emotion_order
from hcld_lib.features.cache import FeatureCache
from hcld_lib.io import HcldError, atomic_write_text
from hcld_lib.method.variants import ARCHS, PAPER_VARIANTS, TABLE_VARIANTS

#: The four numbers of a cell, in percent: emotion WA/UA on the test part, speaker WA/UA on the
#: speaker-test part (= the test part under the paper protocol).
METRICS: tuple[str, ...] = ("emo_wa", "emo_ua", "spk_wa", "spk_ua")

_nan = float("nan")

#: The paper's Table II (IEMOCAP, frozen HuBERT-base, random 80/20 split), percent.
#: EMO-only has no speaker branch, so no speaker numbers.
PAPER_TABLE: pd.DataFrame = pd.DataFrame(
    [
        ("emo_only", "cnn", 70.84, 71.61, _nan, _nan),
        ("emo_only", "lstm", 70.13, 70.95, _nan, _nan),
        ("emo_only", "transformer", 68.03, 68.73, _nan, _nan),
        ("orth", "cnn", 73.35, 74.04, 74.04, 74.83),
        ("orth", "lstm", 74.44, 75.24, 78.67, 78.48),
        ("orth", "transformer", 70.67, 71.50, 81.66, 81.52),
        ("hcld_wo_supcon", "cnn", 74.35, 74.80, 81.57, 81.47),
        ("hcld_wo_supcon", "lstm", 75.16, 75.71, 80.94, 80.77),
        ("hcld_wo_supcon", "transformer", 71.18, 72.02, 81.84, 81.69),
        ("hcld_wo_lcl", "cnn", 75.88, 76.51, 84.46, 84.27),
        ("hcld_wo_lcl", "lstm", 75.43, 75.78, 77.60, 77.69),
        ("hcld_wo_lcl", "transformer", 72.99, 73.62, 81.84, 81.72),
        ("hcld", "cnn", 75.52, 76.08, 75.70, 75.90),
        ("hcld", "lstm", 75.70, 75.90, 78.95, 79.00),
        ("hcld", "transformer", 73.80, 74.59, 83.02, 82.72),
    ],
    columns=["variant", "arch", *METRICS],
)

#: What the printed table holds that is not a variant.
PAPER_NOTES: tuple[str, ...] = (
    "The printed Table II also has an unlabelled extra CNN row: emotion 75.03 / 74.27, "
    "speaker 74.98 / 75.01 (WA / UA); it names no variant and is not compared here.",
    "Paper numbers: IEMOCAP 4-class, frozen HuBERT-base, random 80/20 split (speakers shared "
    "between train and test), model-selection epoch not stated.",
)

PAPER_SETTING = "IEMOCAP / hubert_base / random 80-20"


def _metric(block: Any, task: str, name: str) -> float:
    """``block[task][name]`` or ``block[f"{task}_{name}"]``, as a percentage (NaN if absent)."""
    if not isinstance(block, dict):
        return _nan
    value = block.get(task, {}).get(name) if isinstance(block.get(task), dict) else None
    if value is None:
        value = block.get(f"{task}_{name}")
    return _nan if value is None else 100.0 * float(value)


def metrics_row(metrics: dict[str, Any], run_name: str | None = None) -> dict[str, Any]:
    """One flat row from a run's ``metrics.json`` dict.

    Columns: ``run_name``, ``variant``, ``arch`` (``"cnn"`` or ``"cnn+lstm"`` when the branches
    differ), ``emotion_arch``, ``speaker_arch``, ``protocol``, ``fold``, ``n_folds``, ``seed``,
    ``max_epochs``, ``train_fraction``, ``selected_epoch``, ``epochs_trained``, ``converged``
    and ``plateau_epoch`` (:mod:`hcld_lib.training.stopping`); test ``emo_wa``, ``emo_ua``,
    ``emo_f1`` and speaker-test ``spk_wa``, ``spk_ua`` (percent; NaN without a speaker head);
    ``val_emo_ua``; ``profile`` when the run recorded it in ``config.extra``.
    """
    config = metrics.get("config", {})
    emo_arch = config.get("emotion_arch")
    spk_arch = config.get("speaker_arch") or emo_arch
    arch = emo_arch if (spk_arch == emo_arch or not metrics.get("speaker_branch", True)) else (
        f"{emo_arch}+{spk_arch}")
    test = metrics.get("test", {})
    spk_block = metrics.get("speaker_test") or test
    return {
        "run_name": run_name or config.get("run_name") or metrics.get("run_name"),
        "variant": config.get("variant"),
        "arch": arch,
        "emotion_arch": emo_arch,
        "speaker_arch": spk_arch,
        "protocol": metrics.get("protocol", config.get("protocol")),
        "fold": int(metrics.get("fold", config.get("fold", -1))),
        "n_folds": config.get("n_folds"),
        "seed": config.get("seed"),
        "max_epochs": config.get("max_epochs"),
        "train_fraction": config.get("train_fraction", 1.0),
        "selected_epoch": metrics.get("selected_epoch"),
        "epochs_trained": metrics.get("epochs_trained"),
        "converged": metrics.get("converged"),
        "plateau_epoch": metrics.get("plateau_epoch"),
        "emo_wa": _metric(test, "emotion", "wa"),
        "emo_ua": _metric(test, "emotion", "ua"),
        "emo_f1": _metric(test, "emotion", "f1"),
        "spk_wa": _metric(spk_block, "speaker", "wa"),
        "spk_ua": _metric(spk_block, "speaker", "ua"),
        "val_emo_ua": _metric(metrics.get("val", {}), "emotion", "ua"),
        "profile": (config.get("extra") or {}).get("profile"),
    }


def run_metrics_table(metrics: dict[str, Any]) -> pd.DataFrame:
    """One run's metrics as a small table (percent): rows = ``val``, ``test``, ``speaker_test``,
    and the optimistic ``best_on_test`` emotion UA; columns = emotion / speaker WA and UA."""
    rows = {}
    for split in ("val", "test", "speaker_test"):
        block = metrics.get(split) or {}
        rows[split] = {
            "emotion WA": _metric(block, "emotion", "wa"),
            "emotion UA": _metric(block, "emotion", "ua"),
            "speaker WA": _metric(block, "speaker", "wa"),
            "speaker UA": _metric(block, "speaker", "ua"),
            "n": block.get("n"),
        }
    best = metrics.get("best_on_test") or {}
    if best.get("emotion_ua") is not None:
        rows[f"test, best epoch on test ({best.get('epoch')}; optimistic)"] = {
            "emotion UA": 100.0 * float(best["emotion_ua"]),
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = f"split (selected epoch {metrics.get('selected_epoch')})"
    return out



# --- tables -----------------------------------------------------------------------------------


def _variant_order(present: Iterable[str]) -> list[str]:
    present = list(dict.fromkeys(present))
    return [v for v in TABLE_VARIANTS if v in present] + sorted(
        v for v in present if v not in TABLE_VARIANTS
    )


def mean_std(df: pd.DataFrame, by: Sequence[str], metrics: dict[str, str]) -> pd.DataFrame:
    """Per group of ``by`` (in order of appearance): ``<name>_mean`` and ``<name>_std`` (ddof=1;
    NaN for one run) of each column ``metrics`` maps to ``name``, and ``n_runs``; ``by`` stays
    the index."""
    groups = df.groupby(list(by), sort=False)
    out = groups[list(metrics)].agg(["mean", "std"])
    out.columns = [f"{metrics[m]}_{s}" for m, s in out.columns]
    out["n_runs"] = groups.size()
    return out


def summary_stats(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one run) and run count per variant x arch, long format.

    Columns: ``variant``, ``arch``, ``n_runs`` (folds x seeds), and ``<metric>_mean`` /
    ``<metric>_std`` / ``<metric>_ci`` (the half-width of the 95 % t-interval of the mean,
    ``t_{n-1} std / sqrt(n)``) for each of :data:`METRICS`. Rows in Table II order (variants),
    then :data:`ARCHS` order.
    """
    if df.empty:
        raise HcldError("no finished runs to summarise; run the grid first")
    out = mean_std(df, ["variant", "arch"], {m: m for m in METRICS})
    for m in METRICS:
        out[f"{m}_ci"] = t_half_width(out[f"{m}_std"], out["n_runs"])
    out = out.reset_index()
    arch_rank = {a: i for i, a in enumerate(ARCHS)}
    var_rank = {v: i for i, v in enumerate(_variant_order(out["variant"]))}
    out = out.sort_values(
        ["variant", "arch"],
        key=lambda s: s.map(var_rank if s.name == "variant" else
                            lambda a: arch_rank.get(a, len(ARCHS))),
    )
    stat_cols = [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "ci")]
    cols = ["variant", "arch", "n_runs", *stat_cols]
    return out[cols].reset_index(drop=True)


def _fmt(mean: float, std: float | None = None, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _cell(emo_wa: str, emo_ua: str, spk_wa: str, spk_ua: str) -> str:
    cell = f"{emo_wa} / {emo_ua}"
    if spk_wa != "–":
        cell += f" (spk {spk_wa} / {spk_ua})"
    return cell


def summary_table(df: pd.DataFrame, archs: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean ± std over runs (folds x seeds) in Table II's layout: rows = variants (paper order,
    then others),
    columns = architectures; each cell ``"emoWA ± s / emoUA ± s (spk WA ± s / UA ± s)"``.

    Only runs with the full labelled training part (``train_fraction`` 1) count. The numeric
    version is :func:`summary_stats`.
    """
    if "train_fraction" in df:
        df = df[df["train_fraction"].fillna(1.0) >= 1.0]
    stats = summary_stats(df)
    archs = list(archs) if archs is not None else [a for a in ARCHS if a in set(stats["arch"])] + [
        a for a in dict.fromkeys(stats["arch"]) if a not in ARCHS
    ]
    variants = _variant_order(stats["variant"])
    table = pd.DataFrame(index=pd.Index(variants, name="variant"), columns=archs, dtype=object)
    for _, r in stats.iterrows():
        if r["arch"] not in archs:
            continue
        table.loc[r["variant"], r["arch"]] = _cell(
            *(_fmt(r[f"{m}_mean"], r[f"{m}_std"]) for m in METRICS)
        )
    return table.fillna("not run")


def paper_summary() -> pd.DataFrame:
    """:data:`PAPER_TABLE` in the same layout as :func:`summary_table`."""
    table = pd.DataFrame(index=pd.Index(list(PAPER_VARIANTS), name="variant"), columns=list(ARCHS),
                         dtype=object)
    for _, r in PAPER_TABLE.iterrows():
        table.loc[r["variant"], r["arch"]] = _cell(*(_fmt(r[m], None, 2) for m in METRICS))
    return table


def comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Long numeric comparison: :func:`summary_stats` joined with :data:`PAPER_TABLE`
    (``paper_<metric>`` columns) and ``delta_<metric>`` = ours - paper, in points."""
    stats = summary_stats(df)
    paper = PAPER_TABLE.rename(columns={m: f"paper_{m}" for m in METRICS})
    out = stats.merge(paper, on=["variant", "arch"], how="left")
    for m in METRICS:
        out[f"delta_{m}"] = out[f"{m}_mean"] - out[f"paper_{m}"]
    return out


def side_by_side(
    summary: pd.DataFrame,
    protocol: str,
    profile: str | None = None,
    corpus: str | None = None,
    backbone: str | None = None,
) -> pd.DataFrame:
    """Our Table II (:func:`summary_table`) and the paper's, column beside column per arch.

    Columns are ``"<arch> ours"`` and ``"<arch> paper"``; the frame's ``attrs["title"]`` and the
    header of the ours-columns name the protocol, profile, corpus and backbone, and the paper's
    setting (IEMOCAP, HuBERT-base, random 80/20).
    """
    paper = paper_summary()
    ours_tag = "/".join(str(x) for x in (corpus, backbone, protocol, profile) if x is not None)
    variants = list(summary.index) + [v for v in paper.index if v not in summary.index]
    out = pd.DataFrame(index=pd.Index(variants, name="variant"))
    for arch in summary.columns:
        out[f"{arch} ours ({ours_tag})"] = summary[arch].reindex(variants).fillna("not run")
        if arch in paper.columns:
            out[f"{arch} paper ({PAPER_SETTING})"] = paper[arch].reindex(variants).fillna("–")
    out.attrs["title"] = (
        f"Table II: emotion WA / UA (speaker WA / UA), %, mean ± std over folds x seeds — ours: "
        f"protocol={protocol}, profile={profile}, corpus={corpus}, backbone={backbone}; "
        f"paper: {PAPER_SETTING}"
    )
    return out


# --- writing ----------------------------------------------------------------------------------


def _md_escape(value: Any) -> str:
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            text = ""
        elif float(value).is_integer() and abs(value) < 1e9:
            text = str(int(value))
        else:
            text = f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(df: pd.DataFrame, index: bool = True) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (whole floats as integers, others with 3
    decimals below 1 and 2 above; NaN blank; ``|`` escaped)."""
    frame = df.reset_index() if index and (df.index.name or not isinstance(
        df.index, pd.RangeIndex)) else df
    headers = [
        " / ".join(str(c) for c in col) if isinstance(col, tuple) else str(col)
        for col in frame.columns
    ]
    rows = [[_md_escape(v) for v in row] for row in frame.itertuples(index=False)]
    numeric = [pd.api.types.is_numeric_dtype(frame[c]) for c in frame.columns]
    lines = [
        "| " + " | ".join(_md_escape(h) for h in headers) + " |",
        "| " + " | ".join("---:" if num else "---" for num in numeric) + " |",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_tables(
    df: pd.DataFrame,
    results_dir: str | os.PathLike,
    stem: str,
    title: str,
    notes: Sequence[str] = (),
    index: bool = True,
    provenance: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``df`` to ``results_dir/<stem>.csv`` and ``<stem>.md`` atomically.

    The Markdown starts with ``## <title>`` (say there which profile, corpus, backbone and
    protocol made the table), then the table, then ``notes`` as a list. The CSV holds the data;
    ``provenance`` (e.g. ``dict(profile=..., corpus=..., backbone=..., protocol=...)``) is added
    to it as constant columns so the CSV alone also says what made it. Returns the two paths.
    """
    results_dir = Path(results_dir)
    frame = df.copy()
    for key, value in (provenance or {}).items():
        if key not in frame.columns:
            frame[key] = value
    md = f"## {title}\n\n" + to_markdown(df, index=index)
    if notes:
        md += "\n" + "".join(f"- {n}\n" for n in notes)
    csv_path = atomic_write_text(results_dir / f"{stem}.csv", frame.to_csv(index=index))
    md_path = atomic_write_text(results_dir / f"{stem}.md", md)
    return csv_path, md_path


# --- the data ---------------------------------------------------------------------------------


def corpus_counts(table: pd.DataFrame, by: str = "speaker") -> pd.DataFrame:
    """Utterances per ``by`` (speaker or session) and emotion, with totals (``total``)."""
    counts = pd.crosstab(table[by], table["emotion"], margins=True, margins_name="total")
    return counts[emotion_order(table["emotion"]) + ["total"]]


def features_summary(cache: FeatureCache, seconds: float, reused: bool) -> pd.DataFrame:
    """One-row table of a feature cache: size, shape, and extraction throughput.

    ``seconds`` is the time of the call that returned ``cache``; when the cache was ``reused``
    the throughput is the one recorded when it was extracted (``meta["seconds_last_run"]``).
    """
    meta = cache.meta
    extract_s = float(meta.get("seconds_last_run", float("nan"))) if reused else float(seconds)
    n = len(cache)
    return pd.DataFrame([{
        "backbone": meta.get("backbone"),
        "utterances": n,
        "frames_max": int(cache.max_frames),
        "feature_dim": int(cache.feature_dim),
        "cache_mb": round(float(meta.get("features_bytes", 0)) / 2**20, 1),
        "extraction_s": round(extract_s, 2),
        "utterances_per_s": round(n / extract_s, 1) if extract_s > 0 else float("nan"),
        "reused": bool(reused),
        "open_s": round(float(seconds), 2) if reused else float("nan"),
        "device": meta.get("device"),
    }])
