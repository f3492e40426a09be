"""The label-budget experiment: does cluster pretraining help when emotion labels are scarce?

For each fold and labelled fraction f (``train_run`` keeps an emotion-stratified, seeded share f
of the training part's labels), three conditions (:data:`CONDITIONS`):

- ``"none"``: EMO-only on the labelled share, from scratch;
- ``"cluster"``: the emotion path pretrained on the whole training part (labelled + unlabelled,
  labels hidden; :mod:`hcld_lib.training.pretrain`), then EMO-only fine-tuning on the share;
- ``"cluster+hcld"``: the same pretrained path, fine-tuned with the full HCLD objective.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hcld_lib.analysis.stats import compare, verdict_sentence
from hcld_lib.experiments.engine import run_tasks
from hcld_lib.experiments.grid import fold_list as fold_list_of
from hcld_lib.experiments.grid import run_configs
from hcld_lib.experiments.tables import mean_std
from hcld_lib.io import HcldError, read_json, short_hash
from hcld_lib.training.config import RunConfig
from hcld_lib.training.pretrain import fold_pseudo_labels, history_file, pretrain_emotion_encoder

CONDITIONS: tuple[str, ...] = ("none", "cluster", "cluster+hcld")
"""The label-budget conditions: no pretraining, cluster pretraining, cluster pretraining + HCLD."""

CONDITION_VARIANT: dict[str, str] = {"none": "emo_only", "cluster": "emo_only",
                                     "cluster+hcld": "hcld"}

CONDITION_LABELS: dict[str, str] = {
    "none": "no pretraining (EMO-only)",
    "cluster": "cluster pretraining + EMO-only",
    "cluster+hcld": "cluster pretraining + HCLD",
}


def _pretrain_tag(config: RunConfig, embeddings: np.ndarray, k: int | None, epochs: int,
                  speaker_ce: bool, other_speakers_negative: bool) -> str:
    """A short hash of everything that makes a pretrained encoder (its file name)."""
    fields = {f: getattr(config, f) for f in (
        "features", "emotion_arch", "branches", "embed_dim", "hidden_dim", "n_layers", "n_heads",
        "dropout", "protocol", "n_folds", "fold", "val_fraction", "seed", "frame_stride",
        "max_frames", "batch_size", "lr", "warmup_epochs", "weight_decay", "temperature",
        "stop_at_plateau", "patience", "plateau_window", "min_epochs")}
    # rule 2: clustered with the validation part, stopped on its held-out cluster loss
    fields.update(k=k, epochs=epochs, speaker_ce=speaker_ce, rule=2,
                  other_speakers_negative=other_speakers_negative,
                  embeddings=hashlib.sha1(np.ascontiguousarray(embeddings).tobytes()).hexdigest())
    return short_hash(fields)


@dataclass(frozen=True)
class PretrainTask:
    """One fold x seed's cluster pretraining, as a task of the engine."""

    config: RunConfig
    embeddings: np.ndarray
    ids: tuple[str, ...]
    k: int | None
    epochs: int
    speaker_ce: bool
    other_speakers_negative: bool
    path: Path


def _pretrain(task: PretrainTask) -> str:
    """Pseudo-labels of the fold, then pretraining (skipped when the file exists)."""
    if not (task.path.is_file() and history_file(task.path).is_file()):
        pseudo = fold_pseudo_labels(task.config, task.embeddings, task.ids, k=task.k)
        pretrain_emotion_encoder(task.config, pseudo, task.path, task.epochs, task.speaker_ce,
                                 other_speakers_negative=task.other_speakers_negative)
    return str(task.path)


def label_budget_configs(
    base: RunConfig, speaker_embeddings: tuple[np.ndarray, Sequence[str]],
    fractions: Sequence[float], folds: Sequence[int], seeds: Sequence[int], out_dir: Path,
    conditions: Sequence[str], k: int | None, pretrain_epochs: int,
    speaker_ce: bool, other_speakers_negative: bool,
) -> tuple[list[PretrainTask], list[tuple[str, float, RunConfig]]]:
    """The pretraining tasks (one per fold x seed) and the fine-tuning runs (condition,
    fraction, config) of the experiment."""
    emb = np.asarray(speaker_embeddings[0])
    ids = tuple(str(u) for u in speaker_embeddings[1])
    tasks, runs = [], []
    for fold in folds:
        for seed in seeds:
            fold_cfg = base.replace(variant="emo_only", fold=fold, seed=seed,
                                    out_dir=str(out_dir), run_name=None)
            tag = _pretrain_tag(fold_cfg, emb, k, pretrain_epochs, speaker_ce,
                                other_speakers_negative)
            path = out_dir / "pretrained" / (f"cluster__{base.emotion_arch}__{base.protocol}-"
                                             f"fold{fold}__seed{seed}__{tag}.pt")
            if any(c != "none" for c in conditions):
                tasks.append(PretrainTask(fold_cfg, emb, ids, k, pretrain_epochs, speaker_ce,
                                          other_speakers_negative, path))
            for fraction in fractions:
                for condition in conditions:
                    cfg = base.replace(variant=CONDITION_VARIANT[condition], fold=fold,
                                       seed=seed, out_dir=str(out_dir), run_name=None,
                                       train_fraction=float(fraction))
                    if condition != "none":
                        cfg = cfg.replace(init_emotion_encoder=str(path),
                                          run_name=f"{cfg.resolved_run_name}__pre-cluster-{tag}")
                    runs.append((condition, float(fraction), cfg))
    return tasks, runs


def label_budget_experiment(
    base: RunConfig,
    speaker_embeddings: tuple[np.ndarray, Sequence[str]],
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    folds: int | Sequence[int] = 2,
    out_dir: str | os.PathLike | None = None,
    conditions: Sequence[str] = CONDITIONS,
    *,
    seeds: Sequence[int] | None = None,
    k: int | None = None,
    pretrain_epochs: int | None = None,
    speaker_ce: bool = False,
    other_speakers_negative: bool = False,
    engine: str = "ray",
    address: str | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """No pretraining vs cluster pretraining vs cluster pretraining + HCLD, per labelled fraction.

    Args:
        base: shared settings (features, architecture, widths, epochs, protocol, ...); the
            variant's switches are set per condition (:data:`CONDITION_VARIANT`).
        speaker_embeddings: ``(embeddings [M, D], ids [M])`` of a pretrained speaker encoder,
            covering the cache's table.
        fractions: labelled shares of each fold's training part.
        folds: how many folds (the first ``folds``) or explicit fold indices.
        out_dir: runs go to ``out_dir/<run_name>/``, pretrained encoders to
            ``out_dir/pretrained/``. ``None`` = ``<base.out_dir>/label_budget``.
        conditions: a subset of :data:`CONDITIONS`.
        seeds: training seeds (``None``: ``base.seed``); each fold x seed pretrains once.
        k: clusters per speaker (``None`` = number of emotion classes).
        pretrain_epochs: the most epochs of pretraining (``None`` = ``base.max_epochs``); it
            stops earlier at the plateau of its held-out cluster loss like a run at its
            validation plateau (``base``'s rule; :mod:`hcld_lib.training.pretrain`).
        speaker_ce, other_speakers_negative: pretraining switches
            (:func:`hcld_lib.training.pretrain.pretrain_emotion_encoder`).
        engine, address: where the pretrainings and runs go (``experiments.grid.run_configs``).
        progress: print one line per finished run.

    Returns:
        One row per (condition, fraction, fold, seed): ``condition, train_fraction, pretrained``
        (the encoder file or "") and the columns of ``tables.metrics_row`` (percent), with
        ``n_train`` (labelled utterances). Resumable: finished runs and pretrained encoders are
        reused.
    """
    bad = [c for c in conditions if c not in CONDITIONS]
    if bad:
        raise HcldError(f"unknown condition(s) {bad}; choose from {CONDITIONS}")
    bad_f = [f for f in fractions if not 0.0 < float(f) <= 1.0]
    if bad_f:
        raise HcldError(f"fractions {bad_f} must be in (0, 1]")
    fold_list = fold_list_of(folds, base.n_folds)
    out_dir = Path(out_dir) if out_dir is not None else Path(base.out_dir) / "label_budget"
    pre_epochs = base.max_epochs if pretrain_epochs is None else int(pretrain_epochs)
    tasks, runs = label_budget_configs(
        base, speaker_embeddings, fractions, fold_list, [base.seed] if seeds is None else seeds,
        out_dir, conditions, k, pre_epochs, speaker_ce, other_speakers_negative)
    run_tasks(_pretrain, tasks, engine=engine, address=address,
              describe=lambda t: t.path.name)
    rows = run_configs([c for _, _, c in runs], progress=progress, engine=engine,
                       address=address, desc="label budget")
    info = pd.DataFrame([{"condition": cond, "train_fraction": f,
                          "pretrained": cfg.init_emotion_encoder or ""}
                         for cond, f, cfg in runs])
    metrics = [read_json(c.run_dir / "metrics.json", what="a finished run's metrics",
                         remedy="delete the run folder and run the experiment again")
               for _, _, c in runs]
    rows = rows.assign(n_train=[int(m["n_train"]) for m in metrics])
    return pd.concat([info, rows.drop(columns=["train_fraction"])], axis=1)


def summarize_label_budget(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over folds x seeds (ddof=1; NaN for one run) per condition x fraction.

    Columns: ``condition, train_fraction, n_runs, n_train_mean``, and ``<m>_mean``, ``<m>_std``
    for m in (``wa``, ``ua``, ``f1``) (test emotion, percent).
    """
    if df.empty:
        raise HcldError("no label-budget runs to summarise; run label_budget_experiment first")
    order = {c: i for i, c in enumerate(CONDITIONS)}
    by = ["condition", "train_fraction"]
    out = mean_std(df, by, {"emo_wa": "wa", "emo_ua": "ua", "emo_f1": "f1"})
    out["n_train_mean"] = df.groupby(by, sort=False)["n_train"].mean()
    out = out.reset_index()
    out = out.sort_values(["condition", "train_fraction"],
                          key=lambda s: s.map(order) if s.name == "condition" else s)
    cols = ["condition", "train_fraction", "n_runs", "n_train_mean",
            "wa_mean", "wa_std", "ua_mean", "ua_std", "f1_mean", "f1_std"]
    return out[cols].reset_index(drop=True)


def label_budget_comparisons(df: pd.DataFrame) -> pd.DataFrame:
    """Each pretrained condition against no pretraining at each labelled fraction, by the one
    verdict rule: emotion-UA differences paired by (fold, seed), 95 % t-interval, judged against
    the second paper's direction (pretraining helps: a positive difference)."""
    rows = []
    runs = df.assign(variant=df["condition"])
    for cond in [c for c in dict.fromkeys(df["condition"]) if c != "none"]:
        for f in sorted(df["train_fraction"].unique()):
            result = compare(runs, cond, "none", "emo_ua", 1.0, where={"train_fraction": f})
            rows.append({"condition": cond, "train_fraction": f, **result})
    return pd.DataFrame(rows, columns=["condition", "train_fraction", "mean", "ci_low",
                                       "ci_high", "n_pairs", "verdict"])


def label_budget_sentences(comparisons: pd.DataFrame) -> list[str]:
    """One sentence per row of :func:`label_budget_comparisons`."""
    lines = []
    for r in comparisons.to_dict("records"):
        label = (f"{CONDITION_LABELS.get(r['condition'], r['condition'])}, "
                 f"{100 * r['train_fraction']:g}% labels, vs no pretraining")
        lines.append(f"- {verdict_sentence(label, r)}")
    return lines


def label_budget_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as a readable table: rows = labelled fraction, columns = conditions, cells
    ``"UA ± std"`` in percent."""
    def cell(r: pd.Series) -> str:
        std = "" if pd.isna(r["ua_std"]) else f" ± {r['ua_std']:.1f}"
        return f"{r['ua_mean']:.1f}{std}"

    frame = summary.assign(cell=summary.apply(cell, axis=1),
                           labelled=(100 * summary["train_fraction"]).map(lambda v: f"{v:g}%"))
    table = frame.pivot(index="labelled", columns="condition", values="cell")
    present = [c for c in CONDITIONS if c in table.columns]
    order = sorted(frame["labelled"].unique(), key=lambda s: float(s.rstrip("%")))
    return table.loc[order, present]


def _length(base: RunConfig, most: int, plateau: str) -> str:
    """``most`` epochs under ``base``'s plateau rule, in words; ``plateau`` names the curve."""
    if base.stop_at_plateau:
        return (f"until {plateau} (patience {base.patience}, at least "
                f"{min(base.min_epochs, most)} and at most {most} epochs)")
    return f"{most} epochs"


def fine_tuning_length(base: RunConfig) -> str:
    """How long a fine-tuning run trains, in words."""
    return _length(base, base.max_epochs, "the validation plateau")


def label_budget_notes(base: RunConfig, speaker_encoder: str, k: int | None,
                       pretrain_epochs: int | None, speaker_ce: bool,
                       other_speakers_negative: bool, conditions: Sequence[str]) -> list[str]:
    """The notes under the label-budget table: what each number is and how it was made."""
    return [
        "Test emotion WA / UA / F1, percent; mean and std over folds x seeds (std blank for one "
        "run).",
        f"Pseudo-labels: per-speaker k-means (k = {k or 'number of emotions'}) of "
        f"{speaker_encoder} embeddings of each fold's training and validation parts; "
        "pretraining trains on the first, never reads an emotion label, and stops on the cluster "
        "loss of the second.",
        f"Pretraining: {pretraining_length(base, pretrain_epochs)}, temperature "
        f"{base.temperature}, other speakers as negatives: {other_speakers_negative}, speaker "
        f"CE: {speaker_ce}. Fine-tuning: {fine_tuning_length(base)}, arch "
        f"{base.emotion_arch}; the labelled share is emotion-stratified and seeded (train_run).",
        "Conditions: " + "; ".join(f"{c} = {CONDITION_LABELS[c]}" for c in conditions) + ".",
    ]


def pretraining_length(base: RunConfig, pretrain_epochs: int | None = None) -> str:
    """How long pretraining trains, in words."""
    most = base.max_epochs if pretrain_epochs is None else int(pretrain_epochs)
    kept = "held-out loss" if base.stop_at_plateau else "held-out cluster loss"
    return (f"{_length(base, most, 'the plateau of its held-out cluster loss')}, keeping the "
            f"epoch of the lowest {kept}")


def pretraining_convergence(records: dict[str, dict]) -> str:
    """Whether pretraining converged, in one sentence, from the ``meta`` of each pretrained
    encoder (``{name: meta}``, e.g. per fold; ``training.pretrain.pretraining_record``): how many
    stopped at the plateau of their held-out cluster loss, after how many epochs, which epochs
    were kept, and the held-out loss there against that of an encoder that tells no utterance
    apart."""
    if not records:
        return "No pretrained encoder to judge."
    metas = list(records.values())
    if any("converged" not in m for m in metas):
        return ("Some pretrained encoders were made before pretraining judged its length on a "
                "held-out part; delete the pretrained/ folder of the runs and run the chapter "
                "again.")
    done = [m for m in metas if m["converged"]]
    trained = [int(m["epochs_trained"]) for m in metas]
    kept = [int(m["best_epoch"]) for m in metas]

    def span(v: list[int]) -> str:
        return f"{min(v)}" if min(v) == max(v) else f"{min(v)}-{max(v)}"

    loss = np.mean([m["held_out_loss"] for m in metas if m.get("held_out_loss") is not None])
    chance = np.mean([m["held_out_chance"] for m in metas
                      if m.get("held_out_chance") is not None])
    head = (f"Pretraining reached the plateau of its held-out cluster loss in {len(done)} of "
            f"{len(metas)} encoders, after {span(trained)} epochs; the kept epochs (lowest "
            f"held-out loss) were {span(kept)}, with a held-out loss of {loss:.2f} on average "
            f"against {chance:.2f} for an encoder that tells no utterance apart.")
    if len(done) < len(metas):
        return head + (" The others stopped at their most epochs while the held-out loss was "
                       "still falling: not converged; raise pretrain_epochs.")
    return head + (" The training loss goes on falling after that, while the held-out loss "
                   "rises: longer pretraining fits the training utterances' own clusters.")
