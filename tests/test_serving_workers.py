"""``--workers 2``: two server processes share the HTTP port, /metrics counts both, SIGTERM drains in-flight
requests before the processes exit, and a worker that fails to start stops the server with its error."""
from __future__ import annotations

import io
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest

from onnx_models import (REPO, assert_scores, hl_batch, metric, npy_bytes, offline_scores, physical_hl_model, serve,
                         server_env, slow_hl_model)
from serving.settings import TOKEN_ENV

NPY = {"Content-Type": "application/x-npy"}


@pytest.mark.slow
def test_two_workers_share_the_port_and_metrics_count_both(tmp_path: Path) -> None:
    onnx.save(physical_hl_model(), str(tmp_path / "hl.onnx"))
    with serve(tmp_path / "hl.onnx", tmp_path / "server.log", "--workers", "2", "--decode-processes", "1",
               env={TOKEN_ENV: None}) as server:
        sizes = [1 + i % 7 for i in range(40)]
        for i, n in enumerate(sizes):  # a new connection each: the kernel spreads them over the workers
            x = hl_batch(n, seed=70 + i)
            resp = httpx.post(f"{server.url}/v1/score-npy", content=npy_bytes(x), headers=NPY, timeout=60)
            assert resp.status_code == 200, resp.text
            assert_scores(np.load(io.BytesIO(resp.content)), offline_scores(server.model, {"hl": x}))
        text = httpx.get(f"{server.url}/metrics").text
        meta = httpx.get(f"{server.url}/v1/metadata").json()
    assert meta["settings"]["workers"] == 2
    assert metric(text, "wtag_http_requests_total", route="/v1/score-npy", status="200") == 40
    assert metric(text, "wtag_jets_scored_total") == sum(sizes)
    per_worker = {line.split('pid="')[1].split('"')[0]: float(line.split()[-1])
                  for line in text.splitlines() if line.startswith("wtag_worker_jets_scored{")}
    assert len(per_worker) == 2, text
    assert all(v > 0 for v in per_worker.values()) and sum(per_worker.values()) == sum(sizes), per_worker
    assert metric(text, "wtag_model_info") == 1.0


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests(tmp_path: Path) -> None:
    onnx.save(slow_hl_model(), str(tmp_path / "slow.onnx"))
    x = hl_batch(4000, seed=80)  # about a second or more of scoring on the slow model
    with serve(tmp_path / "slow.onnx", tmp_path / "server.log", "--workers", "2", "--decode-processes", "1",
               "--intra-op-threads", "1", env={TOKEN_ENV: None}) as server:
        assert server.process is not None
        answer: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: answer.append(httpx.post(
            f"{server.url}/v1/score-npy", content=npy_bytes(x), headers=NPY, timeout=60)))
        thread.start()
        time.sleep(0.5)
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        thread.join(60)
        assert server.process.wait(60) == 0
        stopped_after = time.monotonic() - start
    assert answer and answer[0].status_code == 200, answer
    np.testing.assert_allclose(np.load(io.BytesIO(answer[0].content)), offline_scores(server.model, {"hl": x}),
                               rtol=1e-5, atol=1e-6)
    assert stopped_after < 30
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/ping", timeout=2)
    log = server.log.read_text()
    assert "draining 2 workers" in log and log.count("Application shutdown complete") == 2


def test_a_worker_that_cannot_start_stops_the_server_with_its_error(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "serving", "--model", str(tmp_path / "missing.onnx"), "--workers",
                           "2", "--grpc-port", "0", "--port", "0"], cwd=REPO, env=server_env({TOKEN_ENV: None}),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (f"python -m serving: error: model '{tmp_path / 'missing.onnx'}': no such "
                                            "file, directory or MLflow model URI")
