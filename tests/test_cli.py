from __future__ import annotations

import pytest

from wtag.cli import build_parser, main


@pytest.mark.parametrize("argv,needle", [
    (["prepare", "--source", "cms-images", "--data-dir", "DATA"], "needs input files"),
    (["prepare", "--source", "pythia", "--n-jets", "0", "--data-dir", "DATA"], "n_jets=0 must be positive"),
    (["prepare", "--source", "cms-images", "--input", "/nonexistent/file.h5", "--data-dir", "DATA"],
     "/nonexistent/file.h5"),
    (["train", "--model", "nosuchtagger", "--data-dir", "DATA"], "unknown tagger 'nosuchtagger'"),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, needle, tmp_path, tracking_uri, capsys):
    argv = [str(tmp_path) if a == "DATA" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("wtag ")]
    assert len(errors) == 1 and needle in errors[0] and errors[0] == err.strip().splitlines()[-1]
    assert "Traceback" not in err


def test_mlproject_style_numbers_are_accepted():
    args = build_parser().parse_args(["train", "--epochs", "3.0", "--seed", "7.0", "--n-jets", "auto"])
    assert args.epochs == 3 and args.seed == 7 and args.n_jets is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--epochs", "2.5"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--epochs", "0"])


def test_detector_switch_of_every_step_that_prepares(capsys):
    """MLproject passes -P detector=false as text; every step that can prepare data reads it the same way."""
    for command in ("prepare", "train", "tune", "main"):
        assert build_parser().parse_args([command]).detector is True
        assert build_parser().parse_args([command, "--detector", "false"]).detector is False
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([command, "--detector", "off-ish"])
        assert exit_.value.code == 2 and "'off-ish' is not true or false" in capsys.readouterr().err


@pytest.mark.parametrize("flag,default,other", [("weighting", "flat", "w_spectrum"),
                                                 ("epoch_metric", "val_loss", "val_auc")])
def test_training_choices_of_train_tune_and_main(flag, default, other, capsys):
    option = "--" + flag.replace("_", "-")
    for command in ("train", "tune", "main"):
        assert getattr(build_parser().parse_args([command]), flag) == default
        assert getattr(build_parser().parse_args([command, option, other]), flag) == other
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args([command, option, "bogus"])
        assert exit_.value.code == 2 and "invalid choice: 'bogus'" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["generate", "--process", "qcd", "--n-jets", "10", "--output", "DATA/out", "--pileup", "-2"],
     "pileup must be a finite number >= 0"),
    (["generate", "--process", "qcd", "--n-jets", "10", "--output", "DATA/out", "--workers", "-1"],
     "workers must be a positive integer"),
    (["generate", "--process", "qcd", "--n-jets", "10", "--output", "DATA/out", "--seed", "-5"],
     "seed must be an integer in"),
    (["import", "--format", "cms-ntuple", "DATA/missing.npy", "--output", "DATA/out"], "missing.npy"),
    (["import", "--format", "cms-ntuple", "DATA/notes.txt", "--output", "DATA/out"], "not a NumPy .npy file"),
    (["import", "--format", "cms-images", "DATA/notes.txt", "--output", "DATA/out"], "notes.txt"),
    (["tracking-server", "start", "--port", "70000", "--dir", "DATA/mlflow"], "port 70000 is not a TCP port"),
    (["tracking-server", "start", "--dir", "DATA/notes.txt"], "exists and is not a directory"),
    (["serve", "--model", "DATA/missing.onnx", "--port", "1"], "missing.onnx"),
    (["serve", "--model", "DATA/notes.txt", "--max-batch-size", "0"], "max_batch_size must be >= 1"),
])
def test_bad_input_to_the_other_commands_is_one_line_with_exit_code_2(argv, needle, tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a data file\n")
    argv = [a.replace("DATA", str(tmp_path)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("wtag ")]
    assert len(errors) == 1 and needle in errors[0] and errors[0] == err.strip().splitlines()[-1], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.root"))


def test_decorrelation_arguments_default_to_the_config():
    from wtag.cli import _disco_lambdas, _train_config
    from wtag.evaluation import DEFAULT_MAX_SCULPTING
    from wtag.taggers import TrainConfig

    args = build_parser().parse_args(["train"])
    assert _train_config(args) == TrainConfig() and _disco_lambdas(args) is None
    args = build_parser().parse_args(["main", "--disco-lambda", "0,1,3", "--n-bootstrap", "50.0",
                                      "--max-sculpting", "0.1"])
    assert _disco_lambdas(args) == [0.0, 1.0, 3.0] and _train_config(args).n_bootstrap == 50
    assert args.max_sculpting == 0.1
    assert build_parser().parse_args(["evaluate"]).max_sculpting == DEFAULT_MAX_SCULPTING


def test_init_from_reaches_the_train_config():
    from wtag.cli import _train_config

    assert _train_config(build_parser().parse_args(["train"])).init_from == ""
    args = build_parser().parse_args(["main", "--init-from", " runs:/0123abcd/model "])
    assert _train_config(args).init_from == "runs:/0123abcd/model"
