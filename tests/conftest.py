"""Shared fixtures: a real MLflow tracking server process and the real CMS files beside the checkout."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from wtag.tracking import ServerPaths, free_port, start_server, stop_server

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Keep TensorFlow quiet and small on the 2-core CI machine; set before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a real ``mlflow server`` (SQLite backend, local artifact destination) on a free port."""
    paths = ServerPaths(tmp_path_factory.mktemp("mlflow-server"))
    uri = start_server(paths, port=free_port())
    try:
        yield uri
    finally:
        stop_server(paths)


@pytest.fixture
def tracking_uri(tracking_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow (and subprocesses) at the session's server for one test."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    return tracking_server


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CMS Open Data files in ../shared/data; tests using them skip cleanly where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CMS data folder {SHARED_DATA} is absent")
    return SHARED_DATA
