"""Train one model from the command line: one variant, architecture, fold and seed.

    python -m hcld_lib.train --variant hcld --arch cnn --fold 0
    python -m hcld_lib.train --variant adversarial --arch lstm --fold 2 --adversarial-lambda 0.5
    python -m hcld_lib.train --variant hcld --features runs/cache/fbank-1a2b3c4d5e6f --lr 1e-3
    python -m hcld_lib.train --profile paper --dataset iemocap --iemocap-root /data/IEMOCAP

The run's settings are those of the experiment the notebooks' knobs describe (``--profile``,
``--dataset``, ``--backbone``, ... as in a notebook's parameters cell; the embedded synthetic
corpus and its feature cache are made on first use), then ``--<field> value`` for any field of
:class:`hcld_lib.training.config.RunConfig` (``--max-epochs 30``, ``--icld-margin 0.2``; a value
is read as a Python literal when it is one). A field nobody declared is refused with the list of
fields. With ``--features`` the cache is that folder and no experiment is set up. It prints one
line per epoch and where the run was written; a finished run is not trained again.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any

from hcld_lib.io import HcldError, parse_value
from hcld_lib.training.config import RUN_FIELDS, RunConfig
from hcld_lib.training.run import train_run

#: The notebooks' knobs the command line takes (the rest of a run is RunConfig fields).
KNOB_OPTIONS: tuple[str, ...] = ("profile", "dataset", "iemocap_root", "manifest", "backbone",
                                 "protocol", "n_utterances", "seed_corpus", "work_dir", "device")


def _fields(rest: list[str]) -> dict[str, Any]:
    """``--name value`` pairs of RunConfig fields from the arguments argparse did not know."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(rest):
        flag = rest[i]
        if not flag.startswith("--"):
            raise HcldError(f"unexpected argument {flag!r}: give fields as --<field> <value>")
        name, _, inline = flag[2:].partition("=")
        name = name.replace("-", "_")
        if name not in RUN_FIELDS:
            close = difflib.get_close_matches(name, sorted(RUN_FIELDS), n=3)
            hint = f" (did you mean {', '.join('--' + c.replace('_', '-') for c in close)}?)" \
                if close else ""
            raise HcldError(f"--{name.replace('_', '-')} is not a RunConfig field{hint}; the "
                            f"fields are: {', '.join(sorted(RUN_FIELDS))}")
        if inline:
            out[name], i = parse_value(inline), i + 1
        elif i + 1 < len(rest):
            out[name], i = parse_value(rest[i + 1]), i + 2
        else:
            raise HcldError(f"{flag} needs a value")
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hcld_lib.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="hcld", help="a variant of hcld_lib.method.variants")
    p.add_argument("--arch", default="cnn", help="cnn | lstm | transformer (both branches)")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="the training seed")
    p.add_argument("--features", help="a feature cache folder (skips the experiment's set-up)")
    p.add_argument("--out-dir", help="where the run folder goes (default: the experiment's; "
                                     "with --features, ./runs)")
    for knob in KNOB_OPTIONS:
        p.add_argument(f"--{knob.replace('_', '-')}", dest=knob,
                       help="the notebooks' knob of that name"
                       + (" (the corpus's seed)" if knob == "seed_corpus" else ""))
    p.add_argument("--quiet", action="store_true", help="no line per epoch")
    return p


def config_from(args: argparse.Namespace, fields: dict[str, Any]) -> RunConfig:
    """The run the arguments describe."""
    base = dict(variant=args.variant, emotion_arch=args.arch, fold=args.fold, seed=args.seed)
    if args.features:
        ignored = [k for k in KNOB_OPTIONS if k != "device" and getattr(args, k) is not None]
        if ignored:
            raise HcldError(f"--features names the cache itself: {ignored} would describe "
                            "another experiment; leave them out, or drop --features")
        if args.device is not None:
            base["device"] = args.device
        return RunConfig(features=str(args.features), out_dir=args.out_dir or "runs",
                         **{**base, **fields})
    from hcld_lib.experiments.params import setup

    knobs = {k: parse_value(getattr(args, k)) for k in KNOB_OPTIONS if getattr(args, k) is not None}
    if "seed_corpus" in knobs:
        knobs["seed"] = knobs.pop("seed_corpus")
    exp = setup(figures_dir=None, **knobs)
    config = exp.config(args.variant, args.arch, args.fold, args.seed, **fields)
    return config.replace(out_dir=args.out_dir) if args.out_dir else config


def main(argv: list[str] | None = None) -> int:
    args, rest = parser().parse_known_args(argv)
    try:
        config = config_from(args, _fields(rest))
        print(f"[hcld] {config.resolved_run_name} -> {config.run_dir}", flush=True)
        metrics = train_run(config, verbose=not args.quiet)
    except HcldError as err:
        print(f"[hcld] {err}", file=sys.stderr)
        return 2
    emotion = metrics["test"]["emotion"]
    speaker = (metrics.get("speaker_test") or {}).get("speaker")
    state = "converged" if metrics["converged"] else "not converged"
    line = (f"[hcld] test emotion WA {100 * emotion['wa']:.1f} UA {100 * emotion['ua']:.1f} at "
            f"the selected epoch {metrics['selected_epoch']} of {metrics['epochs_trained']} "
            f"({metrics['stop_reason']}, {state})")
    if speaker:
        line += f"; speaker UA {100 * speaker['ua']:.1f}"
    print(line)
    print(f"[hcld] written to {config.run_dir} (metrics.json, history.csv, embeddings.npz, "
          "model.pt, tb/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
