"""The notebooks' parameters, the profiles they start from, and the experiment they describe.

Every notebook's first cell (tagged ``parameters``) holds the knobs of :data:`KNOBS` (and its
own, e.g. ``variant`` in chapter 03); papermill sets them. The next cell is
``exp = setup(globals())``: a knob left ``None`` takes the value of the profile
(:data:`PROFILES`), and :class:`Experiment` names the corpus, the folders and the settings of
every run, in one place.

A **profile** separates what it sets: ``corpus`` (dataset, backbone, corpus size), ``run``
(:class:`~hcld_lib.training.config.RunConfig` fields: protocol, widths, schedule) and the grid
(how many folds and which seeds run).

An **experiment** is a corpus x backbone x protocol x profile (x the ``overrides`` of run fields,
when any). Its folders, under the work and results folders::

    work_dir/corpus/<corpus>/                  the synthetic corpus (written once)
    work_dir/cache/                            feature caches (keyed by backbone, table, files)
    work_dir/runs/<experiment>-<hash>/<run>/   training runs (the hash: every run setting)
    results_dir/<experiment>/                  its figures and tables, and report.md

The default experiment (the quick profile on the embedded corpus, every knob of :data:`SHAPING`
at its default) also writes its figures to ``figures_dir`` (``figures/``, committed); no other
experiment touches it, and neither does a batch given a chapter's own parameter (e.g. ``variant``
of chapter 03: :func:`hcld_lib.batch.run_batch` then sets ``figures_dir=None``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hcld_lib.data import DATASETS, load_corpus
from hcld_lib.experiments.budgets import final_budget
from hcld_lib.experiments.grid import finished_grid, grid_configs, run_configs
from hcld_lib.experiments.tables import write_tables
from hcld_lib.features.cache import FeatureCache
from hcld_lib.features.extract import extract_features
from hcld_lib.io import (
    HcldError,
    atomic_write_bytes,
    ensure_writable_dir,
    read_csv,
    short_hash,
    slug,
)
from hcld_lib.method.variants import ARCHS, BASELINES, TABLE_VARIANTS
from hcld_lib.training.config import RUN_FIELDS, RunConfig


@dataclass(frozen=True)
class Profile:
    """Defaults for a whole batch of experiments."""

    corpus: dict[str, Any]
    """``dataset``, ``backbone``, ``layer`` (the backbone's hidden state: ``"last"``, an index
    or ``"all"``) and, for the synthetic corpus, ``n_utterances``."""
    run: dict[str, Any]
    """:class:`RunConfig` fields shared by every run."""
    folds: int
    """How many of the ``run["n_folds"]`` folds are run (the first ones)."""
    seeds: tuple[int, ...] = (0,)
    """The training seeds of every run (each seed also reshuffles the folds)."""
    reading_archs: tuple[str, ...] = ARCHS
    """The architectures of the open-points chapter (unless ``archs`` is set)."""
    baseline_archs: tuple[str, ...] = ARCHS
    """The architectures on which chapter 04 trains the decoupling baselines beyond the paper
    (adversarial, MI) (unless ``archs`` is set); the paper's five variants run on every one."""
    reading_seeds: tuple[int, ...] = (0,)
    """The seeds of the open-points chapter (unless ``seeds`` is set)."""
    threads: int | None = None
    """Torch threads per process (``OMP_NUM_THREADS``); ``None`` = torch's default."""
    budgets: tuple[int, ...] = ()
    """Shorter training budgets (epochs) at which every comparison is also shown
    (:mod:`hcld_lib.experiments.budgets`); each must be at most the runs' ``min_epochs``, so that
    it is an exact prefix of every run."""
    pretrain_epochs: int = 60
    """The most epochs of cluster pretraining (chapter 07); it stops earlier at the plateau of its
    held-out cluster loss, by the profile's plateau rule."""
    pretrained: tuple[str, Any] | None = None
    """A second backbone (name, layer) on which chapter 04 repeats the headline comparisons
    beside the main one (``None``: none)."""


PROFILES: dict[str, Profile] = {
    # The embedded default: synthetic corpus + log-mel features, narrow encoders, few frames:
    # every notebook of the batch runs in minutes on 2 cores.
    "quick": Profile(
        corpus=dict(dataset="synthetic", backbone="fbank", layer="last", n_utterances=600),
        run=dict(
            protocol="paper", n_folds=5, batch_size=64, lr=3e-3, warmup_epochs=1,
            # to the validation plateau: the trailing mean of 3 epochs' validation UA without a
            # new best for 3 epochs, never before 10, at most 60 (calibrated against 100-epoch
            # runs: bench/calibrate_plateau.py and the README)
            max_epochs=60, stop_at_plateau=True, patience=3, plateau_window=3, min_epochs=10,
            embed_dim=64, hidden_dim=64, n_layers=1,
            # 16 x 20 ms = 320 ms windows; 13 of them = 4.2 s, the synthetic corpus's longest
            # (trained to the plateau, 160 ms windows cost the LSTM and the Transformer twice
            # as much for emotion UA within a point or two: the README)
            frame_stride=16, max_frames=13,
            # no dropout: on the CPU drawing the masks costs a fifth of a Transformer step; a
            # checkpoint every 10 epochs of a run of seconds
            dropout=0.0, checkpoint_every=10,
        ),
        folds=5,
        seeds=(0,),
        # the readings of the open points: one architecture, the grid's seed (5 pairs per
        # comparison; the as-printed reading is chapter 04's own runs); -p seeds [0, 1] for 10
        reading_archs=("cnn",),
        # the adversarial and MI baselines on the CNN, as the readings: HCLD against each and
        # the decoupling scorecard, where they differ most; -p archs [...] or the paper profile
        # runs them on every architecture
        baseline_archs=("cnn",),
        reading_seeds=(0,),
        # the encoders are so small that a second intra-op thread makes them slower
        threads=1,
        # every verdict also at 5 and 10 epochs: the first epochs of the same runs
        budgets=(5, 10),
        pretrain_epochs=60,
        # a real pretrained encoder that installs from PyPI: Whisper tiny.en, its first layer
        # (the best of its layers for emotion here: the README)
        pretrained=("whisper-tiny.en", 1),
    ),
    # The paper's settings: IEMOCAP, HuBERT-base, 5 folds, 100 epochs (as printed: a fixed
    # budget; each run says whether its validation plateau came within them), batch 32, Adam
    # 5e-4.
    "paper": Profile(
        corpus=dict(dataset="iemocap", backbone="torchaudio:hubert_base", layer="last"),
        run=dict(
            protocol="paper", n_folds=5, max_epochs=100, batch_size=32, lr=5e-4, warmup_epochs=5,
            stop_at_plateau=False, patience=10, plateau_window=5,
            embed_dim=256, hidden_dim=256, n_layers=2, frame_stride=1, max_frames=None,
        ),
        folds=5,
        seeds=(0, 1, 2),
        reading_seeds=(0, 1, 2),
        budgets=(20, 50),
        pretrain_epochs=100,
    ),
}

#: The knobs of every notebook's parameters cell, with their defaults (None = the profile's).
KNOBS: dict[str, Any] = dict(
    profile="quick",
    dataset=None,
    iemocap_root=None,
    manifest=None,
    backbone=None,
    layer=None,
    protocol=None,
    folds=None,
    seeds=None,
    max_epochs=None,
    variants=None,
    archs=None,
    device="auto",
    n_utterances=None,
    seed=0,
    work_dir="../runs",
    figures_dir="../figures",
    results_dir="../results",
    overrides=None,
    engine="ray",
    ray_address=None,
)

#: The knobs that change what is computed: the default experiment has each at its default.
SHAPING: tuple[str, ...] = (
    "dataset", "iemocap_root", "manifest", "backbone", "layer", "protocol", "folds", "seeds",
    "max_epochs", "variants", "archs", "n_utterances", "seed", "overrides",
)


def profile(name: str) -> Profile:
    """The profile called ``name``; an unknown name is an error listing the known ones."""
    if name not in PROFILES:
        raise HcldError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}")
    return PROFILES[name]


def provenance(**parts: Any) -> str:
    """One line naming what made a figure or table, e.g.
    ``"profile=quick | corpus=synthetic-n1000-seed0 | backbone=fbank | protocol=paper"``."""
    return " | ".join(f"{k}={v}" for k, v in parts.items() if v is not None)


@dataclass
class Experiment:
    """One experiment: its settings, folders and the runs' base settings (see the module doc)."""

    profile: str
    dataset: str
    backbone: str
    layer: str | int
    """The backbone's hidden state the features are (``"last"``, an index, ``"all"``)."""
    protocol: str
    corpus_name: str
    folds: list[int]
    seeds: list[int]
    variants: list[str]
    archs: list[str]
    device: str
    seed: int
    n_utterances: int
    iemocap_root: str | None
    manifest: str | None
    engine: str
    """``"ray"`` (each run a Ray task) or ``"serial"`` (one after another in this process)."""
    ray_address: str | None
    """``None``: a local Ray with one worker per core; ``"auto"`` / ``"ray://host:port"``: a
    running cluster (:mod:`hcld_lib.experiments.engine`)."""
    run_settings: dict[str, Any]
    """The RunConfig fields every run gets (profile, ``max_epochs``, ``overrides``)."""
    overrides: dict[str, Any]
    work_dir: Path
    results_root: Path
    figures_dir: Path | None
    """Where the default experiment's figures also go (``None``: nowhere but its folder)."""
    name: str
    is_default: bool
    """Every knob that shapes a result (:data:`SHAPING`) at its default, on the quick profile."""
    knobs: dict[str, Any] = field(default_factory=dict)
    """The knobs as given (``None`` = left to the profile)."""
    _table: pd.DataFrame | None = field(default=None, repr=False)
    _cache: FeatureCache | None = field(default=None, repr=False)

    # --- folders -------------------------------------------------------------------------------
    @property
    def results_dir(self) -> Path:
        """``results_dir/<experiment>/``: this experiment's figures, tables and report."""
        return self.results_root / self.name

    @property
    def corpus_dir(self) -> Path:
        return self.work_dir / "corpus" / self.corpus_name

    @property
    def cache_dir(self) -> Path:
        return self.work_dir / "cache"

    @property
    def runs_dir(self) -> Path:
        key = {k: v for k, v in self.run_settings.items() if k != "device"}
        return self.work_dir / "runs" / f"{self.name}-{short_hash(key)}"

    @property
    def caption(self) -> str:
        """The provenance line printed under every figure and above every table."""
        return self.caption_with()

    @property
    def backbone_name(self) -> str:
        """The backbone and, unless it is the last, its layer: ``whisper-tiny.en/layer 1``."""
        return self.backbone if self.layer == "last" else f"{self.backbone}/layer {self.layer}"

    def caption_with(self, **extra: Any) -> str:
        return provenance(profile=self.profile, corpus=self.corpus_name,
                          backbone=self.backbone_name, protocol=self.protocol, **extra)

    def provenance_columns(self) -> dict[str, Any]:
        """``{profile, corpus, backbone, protocol}``: constant columns of every CSV table."""
        return {"profile": self.profile, "corpus": self.corpus_name,
                "backbone": self.backbone_name, "protocol": self.protocol}

    # --- data ----------------------------------------------------------------------------------
    def corpus(self) -> pd.DataFrame:
        """The utterance table; the synthetic corpus is written once into ``corpus_dir``."""
        if self._table is None:
            if self.dataset == "synthetic":
                self._table = load_corpus("synthetic", synthetic_dir=self.corpus_dir,
                                          seed=self.seed, n_utterances=self.n_utterances)
            elif self.dataset == "iemocap":
                self._table = load_corpus("iemocap", root=self.iemocap_root)
            else:
                self._table = load_corpus("manifest", manifest=self.manifest)
        return self._table

    def features(self, progress: bool = True) -> FeatureCache:
        """The feature cache of the corpus and backbone: extracted on the first call (any
        notebook), opened afterwards."""
        if self._cache is None:
            self._cache = extract_features(self.corpus(), backbone=self.backbone,
                                           cache_dir=self.cache_dir, device=self.device,
                                           layer=self.layer, progress=progress)
        return self._cache

    def timed_features(self) -> tuple[FeatureCache, float, bool]:
        """``(cache, seconds, reused)``: the cache, how long getting it took, and whether it
        existed before."""
        before = {m.parent for m in self.cache_dir.glob("*/meta.json")}
        start = time.perf_counter()
        cache = self.features()
        return cache, time.perf_counter() - start, cache.path in before

    # --- runs ----------------------------------------------------------------------------------
    def config(self, variant: str = "hcld", arch: str | None = None, fold: int | None = None,
               seed: int | None = None, **changes: Any) -> RunConfig:
        """The settings of one run of this experiment (the feature cache is made if needed).

        Under ``protocol="loso"`` ``n_folds`` is the number of sessions of the corpus.
        """
        cache = self.features(progress=False)
        fields = dict(self.run_settings)
        if self.protocol == "loso":
            fields["n_folds"] = int(cache.table["session"].nunique())
        fields.update(
            variant=variant, emotion_arch=arch or self.archs[0],
            fold=self.folds[0] if fold is None else int(fold),
            seed=self.seeds[0] if seed is None else int(seed),
            features=str(cache.path), out_dir=str(self.runs_dir), device=self.device,
            extra={"profile": self.profile, "corpus": self.corpus_name,
                   "backbone": self.backbone, "experiment": self.name},
        )
        fields.update(changes)
        return RunConfig(**fields)

    def grid_configs(self, variants: Sequence[str] | None = None,
                     archs: Sequence[str] | None = None, folds: Sequence[int] | None = None,
                     seeds: Sequence[int] | None = None, **overrides: Any) -> list[RunConfig]:
        """The runs of a grid of this experiment (default: its variants, archs, folds, seeds),
        the baselines beyond the paper only on :meth:`baseline_archs`."""
        archs = self.archs if archs is None else archs
        narrow = [a for a in archs if a in self.baseline_archs()]
        base = self.config()
        return [c for v in (self.variants if variants is None else variants)
                for c in grid_configs(base, [v], narrow if v in BASELINES else archs,
                                      self.folds if folds is None else folds,
                                      self.seeds if seeds is None else seeds, self.runs_dir,
                                      overrides)]

    def baseline_archs(self) -> list[str]:
        """The architectures of the adversarial and MI baselines: ``archs`` when given, else
        those of the experiment's that the profile's ``baseline_archs`` names."""
        if self.knobs.get("archs") is not None:
            return list(self.archs)
        return [a for a in self.archs if a in profile(self.profile).baseline_archs]

    def grid(self, variants: Sequence[str] | None = None, archs: Sequence[str] | None = None,
             folds: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
             progress: bool = True, **overrides: Any) -> pd.DataFrame:
        """Train every run of the grid that has not finished; one row per run."""
        configs = self.grid_configs(variants, archs, folds, seeds, **overrides)
        return run_configs(configs, progress=progress, engine=self.engine,
                           address=self.ray_address)

    def grids(self, *others: Experiment, progress: bool = True) -> list[pd.DataFrame]:
        """This experiment's grid and the grids of ``others`` (e.g. :meth:`pretrained`) trained
        as one batch of runs, so that they share the workers without a pause between grids;
        one runs table each, in order."""
        sets = [self.grid_configs(), *(other.grid_configs() for other in others)]
        rows = run_configs([c for configs in sets for c in configs], progress=progress,
                           engine=self.engine, address=self.ray_address)
        starts = np.cumsum([0, *map(len, sets)])
        return [rows.iloc[a:b].reset_index(drop=True) for a, b in zip(starts[:-1], starts[1:])]

    def finished(self, variants: Sequence[str] | None = None, archs: Sequence[str] | None = None,
                 folds: Sequence[int] | None = None, seeds: Sequence[int] | None = None,
                 **overrides: Any) -> pd.DataFrame:
        """The rows of a grid's finished runs, never training (an error names missing runs)."""
        return finished_grid(self.grid_configs(variants, archs, folds, seeds, **overrides))

    def run_dir(self, variant: str, arch: str | None = None, fold: int | None = None,
                seed: int | None = None) -> Path:
        """The folder of one finished run (an error if it has not finished)."""
        config = self.config(variant, arch, fold, seed, **self.overrides)
        finished_grid([config])
        return config.run_dir

    def base_config(self) -> RunConfig:
        """The settings every run of this experiment shares (no feature cache is made)."""
        return RunConfig(**{k: v for k, v in self.run_settings.items() if k in RUN_FIELDS})

    @property
    def budgets(self) -> list[int]:
        """The profile's training budgets that every run of this experiment covers: those up to
        its ``min_epochs`` (capped at ``max_epochs``), below the runs' own end."""
        base = self.base_config()
        reach = min(base.min_epochs, base.max_epochs) if base.stop_at_plateau else base.max_epochs
        return [b for b in profile(self.profile).budgets if b <= reach and b < base.max_epochs]

    @property
    def pretrain_epochs(self) -> int:
        """The profile's most epochs of cluster pretraining (chapter 07)."""
        return profile(self.profile).pretrain_epochs

    @property
    def final_budget(self) -> str:
        """The label of the runs' own end (``"plateau stop"`` or ``"<max_epochs> epochs"``)."""
        base = self.base_config()
        return final_budget(base.stop_at_plateau, base.max_epochs)

    def budget_note(self) -> str:
        """How long the runs trained, in a sentence for the notes under a table."""
        c = self.base_config()
        rule = (f"the plateau rule: the mean validation emotion UA of the last "
                f"{c.plateau_window} epochs has not improved for {c.patience} epochs")
        if c.stop_at_plateau:
            return (f"Runs train until {rule} (at least {min(c.min_epochs, c.max_epochs)}, at "
                    f"most {c.max_epochs} epochs); a run that reaches {c.max_epochs} without "
                    "it is not converged. The epoch kept is the best on validation.")
        return (f"Runs train a fixed {c.max_epochs} epochs; a run counts as converged when "
                f"{rule} within them. The epoch kept is the best on validation.")

    def pretrained(self, **knobs: Any) -> Experiment | None:
        """The same experiment on the profile's second, pretrained backbone (``None`` when the
        profile names none, or this experiment already is on it), for the headline comparisons
        beside the main backbone; ``knobs`` narrow it (e.g. ``archs``, ``variants``)."""
        other = profile(self.profile).pretrained
        if other is None or (self.backbone, self.layer) == tuple(other):
            return None
        backbone, layer = other
        return setup({**self.knobs, "backbone": backbone, "layer": layer, **knobs})

    def reading_grid(self) -> tuple[list[str], list[int]]:
        """The architectures and seeds of the open-points chapter: ``archs`` / ``seeds`` when
        given, else the profile's ``reading_archs`` / ``reading_seeds``."""
        prof = profile(self.profile)
        archs = self.archs if self.knobs.get("archs") is not None else list(prof.reading_archs)
        seeds = self.seeds if self.knobs.get("seeds") is not None else list(prof.reading_seeds)
        return archs, seeds

    # --- outputs -------------------------------------------------------------------------------
    def write_table(self, df: pd.DataFrame, stem: str, title: str, notes: Sequence[str] = (),
                    index: bool = True) -> tuple[Path, Path]:
        """``<stem>.csv`` and ``<stem>.md`` in the experiment's folder, the CSV with the
        provenance columns (:func:`hcld_lib.experiments.tables.write_tables`)."""
        return write_tables(df, self.results_dir, stem, title, notes, index,
                            provenance=self.provenance_columns())

    def read_table(self, stem: str, chapter: str) -> pd.DataFrame:
        """A table that ``chapter`` wrote for this experiment (``<stem>.csv`` in its folder); a
        missing one is an error that says which chapter to run first."""
        return read_csv(self.results_dir / f"{stem}.csv", what=f"a table of {chapter}",
                        remedy=f"run {chapter} on this experiment first (with the same "
                               "parameters)")

    def save_figure(self, fig: Any, name: str, dpi: int = 120) -> Path:
        """Write ``fig`` as ``<name>.png`` into the experiment's folder (and, for the default
        experiment, into ``figures_dir``), atomically; returns the experiment's copy."""
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
        path = atomic_write_bytes(self.results_dir / f"{name}.png", buf.getvalue())
        if self.is_default and self.figures_dir is not None:
            atomic_write_bytes(self.figures_dir / f"{name}.png", buf.getvalue())
        return path


def _listed(value: Any, default: Sequence[Any]) -> list[Any]:
    if value is None:
        return list(default)
    if isinstance(value, str | int):
        return [value]
    return list(value)


REPO = Path(__file__).resolve().parents[2]
"""The repository holding this package (its ``notebooks/`` folder, when it is one)."""


def _folder(given: Mapping[str, Any], knob: str) -> Path:
    """A folder knob as an absolute path: a default one relative to the repository's
    ``notebooks/`` folder, any other relative one to the current directory."""
    value = Path(given[knob]).expanduser()
    if given[knob] == KNOBS[knob] and (REPO / "notebooks").is_dir():
        return (REPO / "notebooks" / value).resolve()
    return value.absolute()


def setup(namespace: Mapping[str, Any] | None = None, **knobs: Any) -> Experiment:
    """The experiment a notebook's parameters describe.

    ``namespace`` is the notebook's ``globals()``: the knobs of :data:`KNOBS` found in it are
    used (any other name is ignored); ``knobs`` given here win. The default folders
    (``../runs``, ``../results``, ``../figures`` of a notebook) are the repository's, wherever
    this is called from (a notebook, a script at the repository's root); other relative folders
    are resolved against the current directory.

    Raises:
        HcldError: an unknown profile or dataset, a missing ``iemocap_root`` / ``manifest``, or
            an ``overrides`` key that is not a RunConfig field.
    """
    given = {k: (namespace or {}).get(k, v) for k, v in KNOBS.items()}
    given.update(knobs)
    prof = profile(given["profile"])
    dataset = given["dataset"] or prof.corpus["dataset"]
    if dataset not in DATASETS:
        raise HcldError(f"dataset={dataset!r}; choose one of {DATASETS}")
    if dataset == "iemocap" and not given["iemocap_root"]:
        raise HcldError("dataset='iemocap' needs iemocap_root (the folder holding Session1..5)")
    if dataset == "manifest" and not given["manifest"]:
        raise HcldError("dataset='manifest' needs manifest (a CSV with path, speaker, emotion)")
    backbone = given["backbone"] or prof.corpus["backbone"]
    layer = given["layer"] if given["layer"] is not None else prof.corpus.get("layer", "last")
    n_utt = int(given["n_utterances"] or prof.corpus.get("n_utterances", 1000))
    seed = int(given["seed"])
    overrides = dict(given["overrides"] or {})
    bad = sorted(set(overrides) - RUN_FIELDS)
    if bad:
        raise HcldError(f"overrides {bad} are not RunConfig fields; see "
                        "hcld_lib.training.config.RunConfig")
    run = dict(prof.run)
    if given["protocol"]:
        run["protocol"] = given["protocol"]
    if given["max_epochs"] is not None:
        run["max_epochs"] = int(given["max_epochs"])
    run.update(overrides)
    n_folds = int(run.get("n_folds", 5))
    n_run = int(given["folds"] if given["folds"] is not None else prof.folds)
    if not 1 <= n_run <= n_folds:
        raise HcldError(f"folds={n_run}: the data is split into n_folds={n_folds} folds and "
                        f"folds runs the first of them; ask for 1..{n_folds}, or split "
                        f"differently with overrides={{'n_folds': {max(n_run, 2)}}}")
    seeds = [int(s) for s in _listed(given["seeds"], prof.seeds)]
    if given["engine"] not in ("ray", "serial"):
        raise HcldError(f"engine={given['engine']!r}; choose 'ray' or 'serial'")

    if dataset == "synthetic":
        corpus = f"synthetic-n{n_utt}-seed{seed}"
    elif dataset == "iemocap":
        corpus = "iemocap"
    else:
        manifest_path = str(Path(given["manifest"]).expanduser().absolute())
        corpus = f"manifest-{slug(Path(manifest_path).stem)}-{short_hash(manifest_path)}"
    backbone_part = slug(backbone) + ("" if layer == "last" else f"-L{slug(layer)}")
    name = f"{corpus}__{backbone_part}__{run['protocol']}__{given['profile']}"
    if overrides:
        name += f"__{short_hash(overrides)}"
    default = given["profile"] == "quick" and all(given[k] == KNOBS[k] for k in SHAPING)
    RunConfig(**{k: v for k, v in run.items() if k in RUN_FIELDS})  # bad values, said now
    exp = Experiment(
        profile=given["profile"], dataset=dataset, backbone=backbone, layer=layer,
        protocol=run["protocol"],
        corpus_name=corpus, folds=list(range(n_run)), seeds=seeds,
        variants=_listed(given["variants"], TABLE_VARIANTS),
        archs=_listed(given["archs"], ARCHS), device=given["device"] or "auto", seed=seed,
        n_utterances=n_utt,
        iemocap_root=(str(Path(given["iemocap_root"]).expanduser().absolute())
                      if given["iemocap_root"] else None),
        manifest=(str(Path(given["manifest"]).expanduser().absolute())
                  if given["manifest"] else None),
        engine=given["engine"], ray_address=given["ray_address"],
        run_settings=run, overrides=overrides,
        work_dir=_folder(given, "work_dir"), results_root=_folder(given, "results_dir"),
        figures_dir=_folder(given, "figures_dir") if given["figures_dir"] else None,
        name=name, is_default=default, knobs=given,
    )
    # an output folder that cannot be written is said now, by name, not after the work
    ensure_writable_dir(exp.work_dir, "work_dir (corpus, feature caches and runs)")
    ensure_writable_dir(exp.results_root, "results_dir (figures and tables)")
    if exp.is_default and exp.figures_dir is not None:
        ensure_writable_dir(exp.figures_dir, "figures_dir (the committed figures)")
    return exp
