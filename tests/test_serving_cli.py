"""The ``serve`` command: ``add_serve_parser`` for the ``wtag`` CLI, ``python -m serving``, defaults from
``serving.settings``, and bad input as one line on stderr with exit status 2."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from onnx_models import REPO, physical_hl_model, server_env
from serving import cli
from serving.settings import DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV, ServerSettings
from wtag import schema
from wtag.errors import exit_status


def _wtag_like_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wtag")
    cli.add_serve_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_serve_subcommand_defaults_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (TOKEN_ENV, "WTAG_SERVE_MAX_BATCH_SIZE", "WTAG_SERVE_DEVICE"):
        monkeypatch.delenv(var, raising=False)
    args = _wtag_like_parser().parse_args(["serve"])
    assert args.func is cli.serve
    assert args.model is None and cli.DEFAULT_MODEL == f"models:/{schema.REGISTERED_MODEL}@{schema.CHAMPION_ALIAS}"
    assert (args.host, args.port) == (DEFAULT_HOST, DEFAULT_PORT)
    assert cli.settings_from(args) == ServerSettings()
    monkeypatch.setenv("WTAG_SERVE_MAX_BATCH_SIZE", "128")
    monkeypatch.setenv("WTAG_SERVE_DEVICE", "cpu")
    args = _wtag_like_parser().parse_args(["serve", "--max-queue-delay-ms", "5", "--max-body-bytes", "1000"])
    settings = cli.settings_from(args)
    assert (settings.max_batch_size, settings.device, settings.max_queue_delay_ms, settings.max_body_bytes) == \
        (128, "cpu", 5.0, 1000)
    assert cli.grpc_port_of(args) == DEFAULT_GRPC_PORT == DEFAULT_PORT + 1
    flag_wins = cli.settings_from(_wtag_like_parser().parse_args(["serve", "--max-batch-size", "7"]))
    assert flag_wins.max_batch_size == 7


def test_grpc_port_follows_the_http_port() -> None:
    """``--port 8081`` alone must not collide with the gRPC default (make demo SERVE_PORT=8081 did)."""
    parse = _wtag_like_parser().parse_args
    assert cli.grpc_port_of(parse(["serve", "--port", "8081"])) == 8082
    assert cli.grpc_port_of(parse(["serve", "--port", "8081", "--grpc-port", "0"])) == 0
    assert cli.grpc_port_of(parse(["serve", "--grpc-port", "9999"])) == 9999


@pytest.mark.parametrize("argv, env, message", [
    (["--model", "nope.onnx"], {}, "model 'nope.onnx': no such file, directory or MLflow model URI"),
    (["--model", "{model}", "--max-batch-size", "0"], {}, "max_batch_size must be >= 1, got 0"),
    (["--model", "{model}", "--port", "70000"], {}, "port 70000 is not in 0..65535"),
    (["--model", "{model}", "--port", "9000", "--grpc-port", "9000"], {}, "grpc-port 9000 is the HTTP port too"),
    (["--model", "{model}", "--port", "65535"], {}, "grpc-port 65536 is not in 0..65535"),
    (["--model", "{model}", "--request-timeout-s", "-1"], {}, "request_timeout_s must be > 0"),
    (["--model", "{model}"], {TOKEN_ENV: ""}, f"auth token ({TOKEN_ENV}) is empty; unset it to turn auth off"),
    (["--model", "{model}"], {TOKEN_ENV: "  "}, "is empty"),
    (["--model", "{model}"], {"WTAG_SERVE_MAX_BODY_BYTES": "lots"}, "WTAG_SERVE_MAX_BODY_BYTES='lots' is not a "
                                                                     "valid int"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str], argv: list[str],
                                             env: dict[str, str], message: str) -> None:
    onnx.save(physical_hl_model(), str(tmp_path / "hl.onnx"))
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = [a.replace("{model}", str(tmp_path / "hl.onnx")) for a in argv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("python -m serving: error: ") and message in err, err
    args = _wtag_like_parser().parse_args(["serve", *argv])
    assert exit_status(lambda: args.func(args), "wtag serve") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("wtag serve: error: ") and message in err, err


def test_python_m_serving_refuses_an_empty_token_at_start_up(tmp_path: Path) -> None:
    onnx.save(physical_hl_model(), str(tmp_path / "hl.onnx"))
    done = subprocess.run([sys.executable, "-m", "serving", "--model", str(tmp_path / "hl.onnx")], cwd=REPO,
                          env=server_env({TOKEN_ENV: ""}), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == (f"python -m serving: error: auth token ({TOKEN_ENV}) is empty; unset it to turn auth "
                           "off\n")
