"""One model from the command line: fields by name, typos refused, one line per epoch."""

from __future__ import annotations

import pytest
from helpers import fbank_cache

from hcld_lib.train import main


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return fbank_cache(tmp_path_factory.mktemp("cli"), n_utterances=60)


def test_a_misspelt_field_is_refused_with_the_fields(capsys):
    assert main(["--variant", "hcld", "--lrr", "1e-3"]) == 2
    err = capsys.readouterr().err
    assert "--lrr is not a RunConfig field (did you mean --lr?)" in err
    assert "icld_margin" in err and "max_epochs" in err  # the list of fields
    assert main(["--max-epochs"]) == 2
    assert "--max-epochs needs a value" in capsys.readouterr().err


def test_a_bad_value_is_refused_by_name(capsys, cache_path, tmp_path):
    assert main(["--features", cache_path, "--out-dir", str(tmp_path), "--lr", "-1"]) == 2
    assert "RunConfig.lr=-1 must be a finite number in (0, inf)" in capsys.readouterr().err


def test_one_run_trains_prints_each_epoch_and_where_it_went(capsys, cache_path, tmp_path):
    argv = ["--variant", "adversarial", "--arch", "cnn", "--fold", "1", "--features", cache_path,
            "--out-dir", str(tmp_path), "--max-epochs", "2", "--n-folds", "2",
            "--embed-dim", "8", "--hidden-dim", "8", "--n-layers", "1", "--frame-stride", "4",
            "--batch-size", "8", "--adversarial-lambda", "0.5", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    name = "adversarial__cnn__paper-fold1__seed0__adversarial_lambda=0.5"
    assert f"[{name}] ep   1/2" in out and f"[{name}] ep   2/2" in out
    assert f"written to {tmp_path / name}" in out
    assert (tmp_path / name / "metrics.json").is_file()
    assert main(argv) == 0  # finished: read back, not trained again
    assert "ep   1/2" not in capsys.readouterr().out
