"""Input resolution against a real HTTP server on 127.0.0.1: downloads, cache reuse, and every failure mode."""
from __future__ import annotations

import http.server
import importlib.util
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from wtag.errors import WtagError
from wtag.sources.cms_images import import_cms_images, read_cms_images
from wtag.sources.remote import cache_name, is_url, resolve_inputs

PAYLOAD = bytes(range(256)) * 4099  # ~1 MiB, not a multiple of the 1 MiB copy chunk


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the test folder; ``/truncated.bin`` promises more bytes than it sends, then hangs up."""

    requests_seen: list[str]

    def do_GET(self) -> None:
        self.requests_seen.append(self.path)
        if self.path == "/truncated.bin":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
            self.wfile.flush()
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        """Keep pytest output clean."""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, list[str]]]:
    """A real threaded HTTP server on a free port serving ``tmp_path/served``; yields (base URL, request log)."""
    served = tmp_path / "served"
    served.mkdir()
    (served / "jets file.npy").write_bytes(PAYLOAD)
    seen: list[str] = []
    handler = type("Handler", (_Handler,), {"requests_seen": seen})

    def make(*args: object, **kwargs: object) -> _Handler:
        return handler(*args, directory=str(served), **kwargs)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), make)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _refused_port() -> int:
    """A port nothing listens on: bind, read the number, close."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_then_reuse(server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, seen = server
    url = f"{base}/jets%20file.npy"
    cache = tmp_path / "cache"
    (got,) = resolve_inputs([url], cache)
    assert got.parent == cache
    assert got.name == cache_name(url)
    assert got.name.endswith("-jets_file.npy")
    assert got.read_bytes() == PAYLOAD
    assert seen == ["/jets%20file.npy"]
    (again,) = resolve_inputs([url], cache)
    assert again == got
    assert seen == ["/jets%20file.npy"], "a cached URL must not be fetched again"
    assert sorted(p.name for p in cache.iterdir()) == [got.name]


def test_mixed_local_and_remote_keep_order(server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, _ = server
    local = tmp_path / "local.npy"
    local.write_bytes(b"x")
    got = resolve_inputs([str(local), f"{base}/jets%20file.npy", local.as_uri()], tmp_path / "cache")
    assert got[0] == local
    assert got[1].read_bytes() == PAYLOAD
    assert got[2] == local


def test_http_404_leaves_nothing(server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, _ = server
    url = f"{base}/missing.h5"
    cache = tmp_path / "cache"
    with pytest.raises(WtagError, match=r"missing\.h5: download failed: HTTP 404"):
        resolve_inputs([url], cache)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_truncated_transfer_leaves_nothing(server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, _ = server
    url = f"{base}/truncated.bin"
    cache = tmp_path / "cache"
    with pytest.raises(WtagError) as info:
        resolve_inputs([url], cache)
    message = str(info.value)
    assert message.startswith(url)
    assert "\n" not in message
    assert not cache.exists() or list(cache.iterdir()) == []


def test_refused_port(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_refused_port()}/jets.npy"
    cache = tmp_path / "cache"
    with pytest.raises(WtagError, match=r"^http://127\.0\.0\.1:\d+/jets\.npy: cannot connect \(.*refused"):
        resolve_inputs([url], cache)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_local_paths(tmp_path: Path) -> None:
    present = tmp_path / "a.npy"
    present.write_bytes(b"1")
    assert resolve_inputs([present], tmp_path / "cache") == [present]
    assert resolve_inputs(str(present), tmp_path / "cache") == [present]
    with pytest.raises(WtagError, match=r"nope\.npy: no such file$"):
        resolve_inputs([str(tmp_path / "nope.npy")], tmp_path / "cache")
    with pytest.raises(WtagError, match="is a directory"):
        resolve_inputs([tmp_path], tmp_path / "cache")
    with pytest.raises(WtagError, match="no input files"):
        resolve_inputs([], tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_unknown_scheme(tmp_path: Path) -> None:
    with pytest.raises(WtagError, match=r"^ftp://host/x\.npy: unsupported URL scheme 'ftp://'"):
        resolve_inputs(["ftp://host/x.npy"], tmp_path / "cache")


@pytest.mark.skipif(importlib.util.find_spec("fsspec_xrootd") is not None, reason="fsspec-xrootd is installed")
def test_xrootd_without_backend_says_what_to_install(tmp_path: Path) -> None:
    url = "root://eospublic.cern.ch//eos/opendata/cms/jet_pfcands.npy"
    with pytest.raises(WtagError) as info:
        resolve_inputs([url], tmp_path / "cache")
    assert str(info.value).startswith(url)
    assert "pip install fsspec-xrootd" in str(info.value)
    assert not (tmp_path / "cache").exists()


def test_url_detection_and_cache_names() -> None:
    assert is_url("https://zenodo.org/records/3901869/files/jet_images.h5")
    assert is_url("root://eospublic.cern.ch//eos/x.npy")
    assert not is_url("data/C:weird.npy")
    assert not is_url("relative/path.npy")
    a = cache_name("https://a.org/x/jet_images.h5")
    b = cache_name("https://b.org/x/jet_images.h5")
    assert a != b and a.endswith("-jet_images.h5") and b.endswith("-jet_images.h5")
    assert cache_name("https://a.org/").endswith("-download")
    assert cache_name("https://a.org/../..").count("/") == 0


def test_importer_reads_a_url_and_leaves_nothing_on_404(server: tuple[str, list[str]], tmp_path: Path) -> None:
    base, _ = server
    images = np.zeros((3, 30, 30, 1))
    images[:, 14, 14, 0] = [250.0, 300.0, 410.0]
    with h5py.File(tmp_path / "served" / "jet_images.h5", "w") as f:
        f["TT"] = images[:1]
        f["QCD"] = images[1:]
    out = import_cms_images([f"{base}/jet_images.h5"], tmp_path / "out")
    got, label = read_cms_images(out)
    np.testing.assert_array_equal(got, images)
    np.testing.assert_array_equal(label, [1, 0, 0])
    assert [p.name for p in (tmp_path / "out" / "downloads").iterdir()] == [cache_name(f"{base}/jet_images.h5")]
    with pytest.raises(WtagError, match="HTTP 404"):
        import_cms_images([f"{base}/jet_images.h5", f"{base}/gone.h5"], tmp_path / "out2")
    assert not (tmp_path / "out2" / "cms_images.h5").exists()
    assert len(list((tmp_path / "out2" / "downloads").iterdir())) == 1, "only the complete download is cached"
