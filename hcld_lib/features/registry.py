"""Backbone names -> backbones (:func:`get_backbone`), and backbones of your own: a frozen
encoder plugged in without editing the package.

:func:`hcld_lib.features.extract.extract_features` takes, besides the built-in names, a
:class:`~hcld_lib.features.backbone.Backbone` instance, a name given to
:func:`register_backbone` in the same process, or a name declared by any installed package as an
entry point of the group :data:`ENTRY_POINT_GROUP` (``hcld.backbones``), e.g. in its
pyproject.toml::

    [project.entry-points."hcld.backbones"]
    my-encoder = "my_package.encoders:MyEncoder"

An entry point (or a registered factory) is called with no argument and must return a
``Backbone``; it works in every process, notebooks and Ray workers included. The backbone goes
through the same cache: its ``spec``, its class and its :meth:`~Backbone.identity` are in the
cache key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from hcld_lib.features.backbone import Backbone
from hcld_lib.features.ct2 import PACKAGED
from hcld_lib.features.fbank import FbankBackbone
from hcld_lib.features.hfsource import HFSource
from hcld_lib.features.ssl import HFBackbone, TorchaudioHubertBackbone
from hcld_lib.features.whisper import (
    CT2WhisperBackbone,
    TorchWhisperBackbone,
    split_window,
    whisper_backbone,
)
from hcld_lib.io import HcldError

ENTRY_POINT_GROUP = "hcld.backbones"

#: The built-in backbone names (and forms), as listed in errors.
BUILTIN_NAMES: tuple[str, ...] = (
    "fbank", "torchaudio:hubert_base", "hf:<model name or folder>", *PACKAGED,
    "whisper:<CTranslate2 folder>", "ct2:<CTranslate2 folder>",
)


def is_builtin_name(name: str) -> bool:
    """Whether ``name`` is (or has the form of) a built-in backbone name."""
    base, _ = split_window(name)
    return base in ("fbank", "torchaudio:hubert_base", *PACKAGED) or base.startswith(
        ("hf:", "ct2:", "whisper:"))


def get_backbone(
    backbone: str | Backbone, checkpoint: str | os.PathLike | None = None,
    sample_rate: int = 16000,
) -> Backbone:
    """Build the backbone named by ``backbone`` (weights are loaded by ``.load(device)``).

    ``backbone`` is a built-in name (:data:`BUILTIN_NAMES`; the Whisper ones may end in
    ``"@30s"``, see :mod:`~hcld_lib.features.whisper`), a name plugged in through
    :mod:`~hcld_lib.features.registry`, or a :class:`Backbone` instance (returned as it is,
    after checking it).

    Raises:
        HcldError: unknown name (the known ones are listed), an object that is not a Backbone,
            a checkpoint for a backbone that takes none, a sample rate the model was not trained
            on, a model that cannot be found, a packaged weight file that was modified.
    """
    if not isinstance(backbone, str):
        return check_backbone(backbone)
    if checkpoint is not None and backbone != "torchaudio:hubert_base":
        hint = ("give the model folder in the name: 'hf:/path/to/folder'"
                if backbone.startswith(("hf:", "ct2:", "whisper:"))
                else "leave checkpoint=None")
        raise HcldError(f"only torchaudio:hubert_base takes a checkpoint; for {backbone!r} {hint}")
    if backbone.startswith("hf:"):
        name, window = split_window(backbone[3:])
        src = HFSource(name, example="facebook/hubert-base-ls960")
        if getattr(src.config, "model_type", "") == "whisper":
            return TorchWhisperBackbone(backbone, hf=src, window=window, sample_rate=sample_rate)
        if window != "utterance":
            raise HcldError(f"'@30s' is for Whisper models; {name} is a {src.config.model_type}")
        return HFBackbone(name, sample_rate=sample_rate, src=src)
    if backbone == "torchaudio:hubert_base":
        return TorchaudioHubertBackbone(checkpoint, sample_rate=sample_rate)
    if backbone == "fbank":
        return FbankBackbone(sample_rate=sample_rate)
    whisper = whisper_backbone(backbone, sample_rate=sample_rate)
    if whisper is not None:
        return whisper
    plugged = plugged_backbone(backbone)
    if plugged is not None:
        return plugged
    known = [*BUILTIN_NAMES, *plugged_names()]
    raise HcldError(
        f"unknown backbone {backbone!r}: use one of {', '.join(repr(k) for k in known)}, or a "
        "Backbone instance, or a name registered with "
        "hcld_lib.features.registry.register_backbone (or an entry point of the group "
        f"{ENTRY_POINT_GROUP!r})"
    )


def is_builtin(bb: Backbone) -> bool:
    """Whether ``bb`` is one of the package's own backbone classes (not a subclass)."""
    return type(bb) in (FbankBackbone, TorchaudioHubertBackbone, HFBackbone,
                        TorchWhisperBackbone, CT2WhisperBackbone)


_REGISTERED: dict[str, Callable[[], Backbone]] = {}


def register_backbone(name: str, factory: Callable[[], Backbone], *,
                      replace: bool = False) -> None:
    """Make ``name`` a backbone name in this process: ``factory()`` builds the backbone.

    Raises:
        HcldError: ``name`` is empty, names a built-in backbone, or is registered already (pass
            ``replace=True`` to replace it); ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name:
        raise HcldError(f"a backbone name must be a non-empty string, got {name!r}")
    if is_builtin_name(name):
        raise HcldError(f"{name!r} is a built-in backbone name: register yours under another")
    if not callable(factory):
        raise HcldError(f"register_backbone({name!r}, ...) needs a callable returning a "
                        f"Backbone (a Backbone subclass, or a function), got {factory!r}")
    if name in _REGISTERED and not replace:
        raise HcldError(f"backbone {name!r} is registered already; pass replace=True")
    _REGISTERED[name] = factory


def unregister_backbone(name: str) -> None:
    """Forget a name given to :func:`register_backbone` (nothing if it was not)."""
    _REGISTERED.pop(name, None)


def _entry_points() -> dict[str, Any]:
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def plugged_names() -> list[str]:
    """Names registered in this process or declared as ``hcld.backbones`` entry points."""
    return sorted(set(_REGISTERED) | set(_entry_points()))


def plugged_backbone(name: str) -> Backbone | None:
    """The backbone registered (or declared as an entry point) under ``name``, else None."""
    factory = _REGISTERED.get(name)
    origin = f"the factory registered as {name!r}"
    if factory is None:
        ep = _entry_points().get(name)
        if ep is None:
            return None
        origin = f"the entry point {name} = {ep.value} (group {ENTRY_POINT_GROUP})"
        try:
            factory = ep.load()
        except Exception as err:
            raise HcldError(f"cannot load {origin}: {type(err).__name__}: {err}") from err
    return check_backbone(factory(), origin)


def check_backbone(bb: Any, origin: str = "the backbone given") -> Backbone:
    """``bb`` if it is a usable :class:`Backbone` (attributes set, identity JSON).

    Raises:
        HcldError: naming what is wrong: not a Backbone, a missing or bad attribute, an
            identity that is not a JSON dict.
    """
    if not isinstance(bb, Backbone):
        raise HcldError(
            f"{origin} is a {type(bb).__name__}, not a hcld_lib.features.backbone.Backbone: "
            "subclass Backbone (spec, sample_rate, num_layers, feature_dim, min_samples; "
            "identity, frame_count, load, forward) or give a built-in backbone name."
        )
    for attr, kind in (("spec", str), ("sample_rate", int), ("num_layers", int),
                       ("feature_dim", int), ("min_samples", int)):
        value = getattr(bb, attr, None)
        ok = isinstance(value, kind) and not isinstance(value, bool)
        if not ok or (kind is int and value < 1) or (kind is str and not value):
            raise HcldError(f"{origin} ({type(bb).__name__}): attribute {attr} must be a "
                            f"{'positive int' if kind is int else 'non-empty string'}, "
                            f"got {value!r}")
    identity = bb.identity()
    try:
        json.dumps(identity, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise HcldError(f"{origin} ({type(bb).__name__}): identity() must return a JSON dict "
                        f"(strings, numbers, lists), got {identity!r} ({err})") from err
    if not isinstance(identity, dict):
        raise HcldError(f"{origin} ({type(bb).__name__}): identity() must return a dict, got "
                        f"{type(identity).__name__}")
    return bb
