"""Which reading of the paper reproduces it: the open points as a grid of their own.

A **reading** is a set of values for the points the paper leaves open (the README's open-points
table): each switch on its own, and small sweeps of the margin m, the temperature tau and the
weight of the contrastive terms. Under each reading, HCLD, EMO-only and orth are trained on every
architecture x fold x seed asked for, and HCLD is compared with EMO-only and with orth by the one
verdict rule (:mod:`hcld_lib.experiments.comparisons`): emotion UA, paired by (fold, seed), 95 %
t-interval, against the paper's direction (HCLD above both, for every architecture).

A reading reaches a baseline only where the baseline reads it (the branches layout reaches all
three; the orth form only orth; the rest only HCLD), so baselines that a reading does not change
are the same runs as under the as-printed reading (:meth:`RunConfig.departures`), trained once.
And a reading can be shown not to reach X_e at all: with separate branches, a setting that only
a term on X_s reads (L_neg's margin and hinge) cannot change the emotion encoder
(:meth:`RunConfig.emotion_key`). Such a reading's HCLD runs are not trained again: their emotion
results are, bit for bit, those of the as-printed runs (``emotion_from`` names the run they come
from; their speaker columns are left empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from hcld_lib.analysis.stats import verdict_sentence
from hcld_lib.experiments import budgets as bd
from hcld_lib.experiments.comparisons import compare_runs, paper_difference
from hcld_lib.experiments.grid import grid_configs, run_configs
from hcld_lib.method.variants import variant_settings
from hcld_lib.training.config import RunConfig


@dataclass(frozen=True)
class Reading:
    """One reading: a name, the open point it reads, the RunConfig fields it sets, and factors
    on loss weights (each variant's own weight times the factor, so a term a variant does not
    have stays off)."""

    name: str
    point: str
    overrides: dict[str, Any] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)

    def for_variant(self, variant: str) -> dict[str, Any]:
        """The fields this reading sets on a run of ``variant``."""
        own = variant_settings(variant)
        return {**self.overrides, **{k: own[k] * f for k, f in self.scale.items()}}


#: The switches of the open-points table, one at a time (the first is the reading as printed,
#: with our defaults where the paper is silent).
SWITCH_READINGS: tuple[Reading, ...] = (
    Reading("as printed", "every default of the open-points table"),
    Reading("L_pos on X_s", "L_pos features", {"icld_pos_space": "speaker"}),
    Reading("printed hinge", "L_neg form", {"icld_hinge": "above"}),
    Reading("SupCon on X_s", "SupCon space and labels", {"supcon_space": "speaker"}),
    Reading("LCL counts i", "LCL: is i a positive", {"lcl_include_self": True}),
    Reading("shared encoder", "branches", {"branches": "shared"}),
    Reading("orth /B form", "orth baseline penalty", {"orth_form": "batch"}),
)

#: Small sweeps of the values the paper does not give.
SWEEP_READINGS: tuple[Reading, ...] = (
    *(Reading(f"margin {m:g}", "margin m", {"icld_margin": m}) for m in (-0.2, 0.2, 0.5)),
    *(Reading(f"tau {t:g}", "temperature", {"temperature": t}) for t in (0.05, 0.2, 0.5)),
    *(Reading(f"contrastive x{w:g}", "weight of the contrastive terms",
              scale={"w_icld": w, "w_supcon": w, "w_lcl": w}) for w in (0.1, 0.3)),
)

VARIANTS: tuple[str, ...] = ("emo_only", "orth", "hcld")
COMPARISONS: tuple[tuple[str, str], ...] = (("hcld", "emo_only"), ("hcld", "orth"))


def readings(sweeps: bool = True) -> list[Reading]:
    """The switch readings, and the sweeps unless ``sweeps=False``."""
    return [*SWITCH_READINGS, *(SWEEP_READINGS if sweeps else ())]


def reading_configs(base: RunConfig, chosen: Sequence[Reading], archs: Sequence[str],
                    folds: Sequence[int], seeds: Sequence[int]) -> dict[str, list[RunConfig]]:
    """The runs of every reading: ``{reading name: configs of its three variants}``."""
    return {r.name: [c for v in VARIANTS for c in grid_configs(
        base, [v], archs, folds, seeds, overrides=r.for_variant(v))] for r in chosen}


def emotion_representatives(configs: Sequence[RunConfig]) -> dict[str, RunConfig]:
    """For each run, by name, the run that is trained for its emotion results: the first of
    ``configs`` with the same :meth:`RunConfig.emotion_key` (itself, unless an earlier run
    provably has the same emotion branch)."""
    first: dict[str, RunConfig] = {}
    return {c.resolved_run_name: first.setdefault(c.emotion_key(), c) for c in configs}


def run_readings(base: RunConfig, chosen: Sequence[Reading], archs: Sequence[str],
                 folds: Sequence[int], seeds: Sequence[int], engine: str = "ray",
                 address: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Train every run of every reading that has not finished, each once however many
    readings share it, and none whose emotion branch is provably that of another run
    (:func:`emotion_representatives`); one row per (reading, run), with columns ``reading``,
    ``emotion_from`` (the run its emotion results come from) and ``trained`` (it is that run;
    otherwise its speaker columns are empty)."""
    by_reading = reading_configs(base, chosen, archs, folds, seeds)
    unique = {c.resolved_run_name: c for configs in by_reading.values() for c in configs}
    source = emotion_representatives(list(unique.values()))
    trained = {c.resolved_run_name: c for c in source.values()}
    # the as-printed reading's runs are the main grid's (chapter 04), which may be training them
    as_printed = {c.resolved_run_name for c in by_reading.get(AS_PRINTED, [])}
    rows = run_configs(list(trained.values()), progress=progress, engine=engine,
                       address=address, desc="readings",
                       later=as_printed).set_index("run_name", drop=False)
    out = []
    for name, configs in by_reading.items():
        for c in configs:
            origin = source[c.resolved_run_name].resolved_run_name
            row = rows.loc[origin].to_dict() | {"run_name": c.resolved_run_name, "reading": name,
                                                "emotion_from": origin}
            if origin != c.resolved_run_name:
                row.update(spk_wa=float("nan"), spk_ua=float("nan"))
            out.append(row | {"trained": origin == c.resolved_run_name})
    return pd.DataFrame(out)


AS_PRINTED = SWITCH_READINGS[0].name


def _scores(rows: pd.DataFrame, reading: str, variant: str, arch: str) -> list[float]:
    sub = rows[(rows["reading"] == reading) & (rows["variant"] == variant)
               & (rows["arch"] == arch)]
    return sub.sort_values(["fold", "seed"])["emo_ua"].tolist()


def readings_table(rows: pd.DataFrame, chosen: Sequence[Reading]) -> pd.DataFrame:
    """Per reading x architecture x comparison: the emotion-UA difference, its interval and
    verdict (:data:`hcld_lib.experiments.comparisons.COLUMNS`), the paper's difference, and
    ``same_as_printed``: whether HCLD's emotion UA under this reading equals the as-printed
    reading's run by run (the reading then does not reach X_e at all)."""
    out = []
    point = {r.name: r.point for r in chosen}
    for name in dict.fromkeys(rows["reading"]):
        sub = rows[rows["reading"] == name]
        for arch in dict.fromkeys(sub["arch"]):
            same = (name != AS_PRINTED and AS_PRINTED in set(rows["reading"])
                    and _scores(rows, name, "hcld", arch) == _scores(rows, AS_PRINTED, "hcld",
                                                                      arch))
            for a, b in COMPARISONS:
                paper = paper_difference(a, b, arch, "emo_ua")
                result = compare_runs(sub, a, b, "emo_ua", paper, where={"arch": arch})
                out.append({"reading": name, "point": point.get(name, ""), "arch": arch,
                            "comparison": f"HCLD vs {'EMO-only' if b == 'emo_only' else b}",
                            "a": a, "b": b,
                            "paper": paper, **result, "same_as_printed": same})
    return pd.DataFrame(out)


def holding_readings(table: pd.DataFrame) -> list[str]:
    """The readings under which both of the paper's directions held on every architecture (at
    the runs' own end, when ``table`` has several budgets)."""
    table = bd.final_rows(table)
    held = table.groupby("reading", sort=False)["verdict"].apply(lambda v: (v == "held").all())
    return [name for name, ok in held.items() if ok]


def reading_sentences(table: pd.DataFrame) -> list[str]:
    """One sentence per reading: does the paper's direction reproduce under it (at the runs' own
    end, when ``table`` has several budgets)?"""
    table = bd.final_rows(table)
    lines = []
    for name, sub in table.groupby("reading", sort=False):
        parts = [verdict_sentence(f"{r['comparison']} ({r['arch']})", r).rstrip(".")
                 for r in sub.to_dict("records")]
        verdicts = set(sub["verdict"])
        word = ("reproduces the paper's direction" if verdicts == {"held"} else
                "contradicts the paper" if "contradicted" in verdicts and "held" not in verdicts
                else "does not reproduce it" if verdicts <= {"not shown", "contradicted"}
                else "reproduces it in part")
        line = f"**{name}** ({sub['point'].iloc[0]}): {word}. " + "; ".join(parts) + "."
        if "same_as_printed" in sub and sub["same_as_printed"].astype(bool).all():
            line += (" HCLD's emotion UA is the as-printed one, run by run: this switch does "
                     "not reach X_e here.")
        lines.append(line)
    return lines


def readings_summary(table: pd.DataFrame, corpus: str) -> str:
    """The sentence the report leads with: under which reading(s) the paper's claims hold."""
    table = bd.final_rows(table)
    held = holding_readings(table)
    n = int(table["n_pairs"].min()) if len(table) else 0
    if not held:
        return (f"On {corpus}, under none of the {table['reading'].nunique()} readings run did "
                "HCLD come out above both EMO-only and orth on every architecture with a 95 % "
                f"interval that excludes 0 (at least {n} (fold, seed) pairs each).")
    return (f"On {corpus}, the paper's claims (HCLD above EMO-only and above orth, on every "
            f"architecture run) hold under: {', '.join(held)} (95 % intervals over at least "
            f"{n} (fold, seed) pairs).")


def readings_by_budget(budgeted: pd.DataFrame, chosen: Sequence[Reading]) -> pd.DataFrame:
    """:func:`readings_table` at every budget of ``budgeted`` (the rows of :func:`run_readings`
    through :func:`budgets.budget_runs <hcld_lib.experiments.budgets.budget_runs>`), with
    ``budget`` and ``converged_share`` (of the compared runs under the row's reading)."""
    def share(runs: pd.DataFrame, row: dict) -> float:
        return bd.converged_share(runs, [row["a"], row["b"]], {"arch": row["arch"],
                                                      "reading": row["reading"]})

    return bd.by_budget(budgeted, lambda runs: readings_table(runs, chosen), share)


def reading_stability(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`budgets.stability <hcld_lib.experiments.budgets.stability>` of a
    :func:`readings_by_budget` table, one row per reading x architecture x comparison."""
    return bd.stability(table, ["reading", "arch", "comparison"])
