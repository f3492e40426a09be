"""What the notebooks share: parameter resolution, the corpus, the feature cache, the base config.

Every notebook's ``parameters`` cell holds the same knobs (``profile``, ``dataset``,
``backbone``, ``protocol``, ``folds``, ``epochs``, ...); a knob left as ``None`` takes the
profile's value (:data:`hcld_lib.config.PROFILES`). :func:`resolve_params` does that once, in one
place, and derives the folders under ``work_dir``::

    work_dir/corpus/<corpus tag>/                 the synthetic corpus (written once)
    work_dir/cache/<backbone>-<key>/              feature caches (keyed by backbone, table, files)
    work_dir/runs/<corpus tag>__<backbone>__<profile>-<hash>/<run_name>/   training runs

The runs folder is keyed by every setting that changes a run but is not in its name (epochs,
widths, n_folds, ...), so notebooks 03, 04, 05 and the §6 notebooks find each other's finished
runs and never mistake a run made with other settings for theirs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd

from hcld_lib.config import ARCHS, PAPER_VARIANTS, PROFILES, RUN_FIELDS, RunConfig
from hcld_lib.io import HcldError

#: The parameters every notebook may set, with their notebook defaults (None = from the profile).
NOTEBOOK_DEFAULTS: dict[str, Any] = dict(
    profile="quick",
    dataset=None,
    iemocap_root=None,
    manifest=None,
    backbone=None,
    protocol=None,
    folds=None,
    epochs=None,
    variants=None,
    archs=None,
    device="auto",
    n_utterances=None,
    seed=0,
    work_dir="../runs",
    figures_dir="../figures",
    results_dir="../results",
    overrides=None,
)

DATASETS: tuple[str, ...] = ("synthetic", "iemocap", "manifest")


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(text))
    return keep.strip("-") or "x"


def _short_hash(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:8]


def resolve_params(**params: Any) -> dict[str, Any]:
    """Fill every ``None`` knob from the profile and derive folders; return one flat dict.

    Accepts the keys of :data:`NOTEBOOK_DEFAULTS` (others are kept as they are, e.g. a notebook's
    own ``variant`` or ``fold``). Relative folders are resolved against the current directory
    (a notebook's folder when run by Jupyter or papermill).

    Returned keys, beyond the inputs: ``n_folds`` (folds of the split; ``folds`` = how many of
    them to run), ``corpus`` (a readable corpus name), ``corpus_dir``, ``cache_dir``,
    ``runs_dir``, ``run_overrides`` (RunConfig fields from the profile, ``epochs`` and
    ``overrides``) and ``caption`` (the provenance line for figures and tables).

    Raises:
        HcldError: unknown profile or dataset, a missing ``iemocap_root``/``manifest``, or an
            ``overrides`` key that is not a RunConfig field.
    """
    p = {**NOTEBOOK_DEFAULTS, **params}
    profile = p["profile"]
    if profile not in PROFILES:
        raise HcldError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    prof = PROFILES[profile]
    for key in ("dataset", "backbone", "protocol", "epochs", "n_utterances"):
        if p[key] is None:
            p[key] = prof.get(key)
    p["dataset"] = p["dataset"] or "synthetic"
    p["backbone"] = p["backbone"] or "fbank"
    p["protocol"] = p["protocol"] or "paper"
    p["n_utterances"] = int(p["n_utterances"] or 1000)
    if p["dataset"] not in DATASETS:
        raise HcldError(f"dataset={p['dataset']!r}; choose one of {DATASETS}")
    if p["dataset"] == "iemocap" and not p["iemocap_root"]:
        raise HcldError("dataset='iemocap' needs iemocap_root (the folder holding Session1..5)")
    if p["dataset"] == "manifest" and not p["manifest"]:
        raise HcldError("dataset='manifest' needs manifest (a CSV with path, speaker, emotion)")
    p["n_folds"] = int(prof.get("n_folds", 5))
    p["folds"] = int(p["folds"] if p["folds"] is not None else prof.get("folds", p["n_folds"]))
    if p["folds"] > p["n_folds"]:
        p["n_folds"] = p["folds"]  # asking for more folds than the profile splits into
    p["variants"] = list(p["variants"]) if p["variants"] is not None else list(PAPER_VARIANTS)
    p["archs"] = list(p["archs"]) if p["archs"] is not None else list(ARCHS)
    p["seed"] = int(p["seed"])
    p["device"] = p["device"] or "auto"

    overrides = dict(p["overrides"] or {})
    bad = sorted(set(overrides) - RUN_FIELDS)
    if bad:
        raise HcldError(f"overrides {bad} are not RunConfig fields; see hcld_lib.config.RunConfig")
    run_overrides = {k: v for k, v in prof.items() if k in RUN_FIELDS}
    if p["epochs"] is not None:
        run_overrides["epochs"] = int(p["epochs"])
    run_overrides.update(overrides)
    run_overrides.update(protocol=p["protocol"], n_folds=p["n_folds"], seed=p["seed"])
    p["run_overrides"] = run_overrides

    for key in ("work_dir", "figures_dir", "results_dir"):
        p[key] = str(Path(p[key]).expanduser().absolute())
    work = Path(p["work_dir"])
    if p["dataset"] == "synthetic":
        p["corpus"] = f"synthetic-n{p['n_utterances']}-seed{p['seed']}"
    elif p["dataset"] == "iemocap":
        p["corpus"] = "iemocap"
        p["iemocap_root"] = str(Path(p["iemocap_root"]).expanduser().absolute())
    else:
        p["manifest"] = str(Path(p["manifest"]).expanduser().absolute())
        p["corpus"] = f"manifest-{_slug(Path(p['manifest']).stem)}-{_short_hash(p['manifest'])}"
    p["corpus_dir"] = str(work / "corpus" / p["corpus"])
    p["cache_dir"] = str(work / "cache")
    key = {k: v for k, v in run_overrides.items() if k not in ("device",)}
    p["runs_dir"] = str(
        work / "runs" / f"{p['corpus']}__{_slug(p['backbone'])}__{profile}-{_short_hash(key)}"
    )
    p["caption"] = caption(p)
    return p


def caption(params: dict[str, Any], **extra: Any) -> str:
    """The provenance line of a figure or table: profile, corpus, backbone, protocol (+ extra)."""
    from hcld_lib.plots import provenance

    return provenance(
        profile=params.get("profile"), corpus=params.get("corpus", params.get("dataset")),
        backbone=params.get("backbone"), protocol=params.get("protocol"), **extra,
    )


def provenance_dict(params: dict[str, Any]) -> dict[str, Any]:
    """``{profile, corpus, backbone, protocol}`` for the CSV columns of a table."""
    return {k: params.get(k) for k in ("profile", "corpus", "backbone", "protocol")}


def prepare_corpus(params: dict[str, Any]) -> pd.DataFrame:
    """The utterance table of ``params["dataset"]``; the synthetic corpus is written once into
    ``corpus_dir`` and reused afterwards (same seed and size give the same files)."""
    from hcld_lib.data import load_corpus

    p = params if "corpus_dir" in params else resolve_params(**params)
    if p["dataset"] == "synthetic":
        return load_corpus("synthetic", synthetic_dir=p["corpus_dir"], seed=p["seed"],
                           n_utterances=p["n_utterances"])
    if p["dataset"] == "iemocap":
        return load_corpus("iemocap", root=p["iemocap_root"])
    return load_corpus("manifest", manifest=p["manifest"])


def existing_caches(params: dict[str, Any]) -> set[Path]:
    """The complete feature caches under ``cache_dir`` (each holds a ``meta.json``)."""
    root = Path(params["cache_dir"])
    return {m.parent for m in root.glob("*/meta.json")} if root.is_dir() else set()


def prepare_features(
    params: dict[str, Any], table: pd.DataFrame | None = None, progress: bool = True
) -> Any:
    """The :class:`hcld_lib.features.FeatureCache` of the corpus and backbone of ``params``.

    :func:`hcld_lib.features.extract_features` keys the cache by backbone, table and files, so
    the first call extracts into ``cache_dir`` and every later call (any notebook) opens it.
    """
    from hcld_lib.features import extract_features

    p = params if "cache_dir" in params else resolve_params(**params)
    if table is None:
        table = prepare_corpus(p)
    device = None if p["device"] in (None, "auto") else p["device"]
    return extract_features(table, backbone=p["backbone"], cache_dir=p["cache_dir"],
                            device=device, progress=progress)


def features_summary(cache: Any, seconds: float, reused: bool) -> pd.DataFrame:
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


def base_config(params: dict[str, Any], cache: Any | None = None, **changes: Any) -> RunConfig:
    """The :class:`RunConfig` shared by every run of the notebooks (variant ``hcld``, CNN, fold 0,
    ``runs_dir``), built from the profile, ``epochs``, ``overrides`` and ``changes``.

    Under ``protocol="loso"`` ``n_folds`` is the number of sessions in the cache's table.
    """
    p = params if "runs_dir" in params else resolve_params(**params)
    cache = cache if cache is not None else prepare_features(p)
    fields = dict(p["run_overrides"])
    if p["protocol"] == "loso":
        fields["n_folds"] = int(cache.table["session"].nunique())
    fields.update(
        features=str(cache.path), out_dir=p["runs_dir"], device=p["device"],
        extra={"profile": p["profile"], "corpus": p["corpus"], "backbone": p["backbone"]},
    )
    fields.update(changes)
    variant = fields.pop("variant", "hcld")
    return RunConfig.for_variant(variant, **fields)


def fold_indices(params: dict[str, Any], config: RunConfig) -> list[int]:
    """The folds to run: the first ``params["folds"]`` of ``config.n_folds``."""
    return list(range(min(int(params["folds"]), int(config.n_folds))))

