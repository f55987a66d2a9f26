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


def test_init_from_reaches_the_train_config():
    from wtag.cli import _train_config

    assert _train_config(build_parser().parse_args(["train"])).init_from == ""
    args = build_parser().parse_args(["main", "--init-from", " runs:/0123abcd/model "])
    assert _train_config(args).init_from == "runs:/0123abcd/model"
