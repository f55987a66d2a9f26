"""Bulk arrays (/v1/score-npy): .npy and .npz bodies, the .npy codec against numpy's, nothing unpickled."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from onnx_models import (N_HL, N_PART, TOKEN, Server, assert_scores, check_bad_requests, hl_batch, metric,
                         npy_bytes as _npy, offline_scores)
from serving.protocols import arrays
from serving.wire import RequestError
from wtag import schema

NPY = {"Content-Type": "application/x-npy"}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["float32", "float64", "fortran", "big-batch"])
def test_npy_route(hl_server: Server, layout: str) -> None:
    x = hl_batch(1000 if layout == "big-batch" else 17, seed=6)
    sent = {"float32": x, "float64": x.astype(np.float64), "fortran": np.asfortranarray(x), "big-batch": x}[layout]
    buffer = io.BytesIO()
    np.save(buffer, sent)
    with hl_server.client() as client:
        resp = client.post("/v1/score-npy", content=buffer.getvalue(), headers={"Content-Type": "application/x-npy"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/x-npy"
    scores = np.load(io.BytesIO(resp.content), allow_pickle=False)
    assert scores.dtype == np.float32 and scores.shape == (len(x),)
    assert_scores(scores, offline_scores(hl_server.model, {"hl": x}))


@pytest.mark.slow
def test_npz_route_for_two_inputs(guarded_server: Server) -> None:
    rng = np.random.default_rng(7)
    inputs = {"hl": hl_batch(6, seed=7),
              "particles": rng.normal(size=(6, schema.MAX_PARTICLES, N_PART)).astype(np.float32)}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **inputs)
    with guarded_server.client(TOKEN) as client:
        resp = client.post("/v1/score-npy", content=buffer.getvalue(), headers={"Content-Type": "application/x-npz"})
        assert resp.status_code == 200, resp.text
        assert_scores(np.load(io.BytesIO(resp.content)), offline_scores(guarded_server.model, inputs))
        single = io.BytesIO()
        np.save(single, inputs["hl"])
        resp = client.post("/v1/score-npy", content=single.getvalue(), headers={"Content-Type": "application/x-npy"})
        assert resp.status_code == 422 and "send an .npz" in resp.json()["error"]


@pytest.mark.slow
def test_pickled_bodies_are_never_unpickled(hl_server: Server, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (open, (str(marker), "w"))

    payload = _npy(np.array([Exploit(), Exploit()], dtype=object), allow_pickle=True)
    with hl_server.client() as client:
        for path in ("/v1/score-npy", "/v1/score-file"):
            resp = client.post(path, content=payload, headers=NPY)
            assert resp.status_code == 422, resp.text
            assert "object" in resp.json()["error"] or "Python objects" in resp.json()["error"]
    assert not marker.exists()


ARRAY_BAD_REQUESTS = [
    # (method, path, body, headers, status, message fragment)
    ("POST", "/v1/score-npy", b"not an array", NPY, 400, "not a .npy array"),
    ("POST", "/v1/score-npy", _npy(np.ones((3, N_HL)))[:-8], NPY, 400, "data bytes"),
    ("POST", "/v1/score-npy", _npy(np.ones((3, N_HL)))[:12], NPY, 400, "header"),
    ("POST", "/v1/score-npy", _npy(np.array(["a", "b"])), NPY, 422, "expected numbers"),
    ("POST", "/v1/score-npy", _npy(np.zeros(2, dtype=[("a", "<f4"), ("b", "<f4")])), NPY, 422, "expected numbers"),
    ("POST", "/v1/score-npy", _npy(np.ones((3, 7))), NPY, 422, "shape (3, 7)"),
    ("POST", "/v1/score-npy", _npy(np.ones((0, N_HL))), NPY, 422, "empty batch"),
    ("POST", "/v1/score-npy", _npy(np.full((2, N_HL), np.nan)), NPY, 422, "NaN or infinite"),
    ("POST", "/v1/score-npy", _npy(np.ones((3, N_HL))), {"Content-Type": "image/png"}, 415, "not supported"),
    ("POST", "/v1/score-npy", b"PK\x03\x04garbage", {"Content-Type": "application/x-npz"}, 400, "not a .npz"),
]


@pytest.mark.slow
def test_arrays_bad_requests_get_4xx_with_a_message_and_the_server_stays_healthy(hl_server: Server) -> None:
    metrics = check_bad_requests(hl_server, ARRAY_BAD_REQUESTS)
    assert metric(metrics, "wtag_http_requests_total", status="500") == 0



@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float32).reshape(3, 4),
                                   np.asfortranarray(np.arange(12.0).reshape(3, 4)),
                                   np.arange(5, dtype=">i4"), np.float64(2.5)])
def test_npy_decode_matches_numpy(array: np.ndarray) -> None:
    decoded = arrays.npy_decode(_npy(np.asarray(array)))
    np.testing.assert_array_equal(decoded, np.load(io.BytesIO(_npy(np.asarray(array))), allow_pickle=False))
    assert decoded.dtype == np.asarray(array).dtype


def test_npy_decode_reads_version_2_headers() -> None:
    buffer = io.BytesIO()
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.lib.format.write_array(buffer, array, version=(2, 0))
    np.testing.assert_array_equal(arrays.npy_decode(buffer.getvalue()), array)
    with pytest.raises(RequestError, match="unreadable .npy header"):
        arrays.npy_decode(b"\x93NUMPY\x01\x00\x10\x00{'descr': __import__('os')}")


@pytest.mark.parametrize("n", [1, 17, 100_000])
def test_npy_encode_is_what_numpy_writes(n: int) -> None:
    scores = np.random.default_rng(n).uniform(size=n).astype(np.float32)
    assert arrays.npy_encode(scores) == _npy(scores)
