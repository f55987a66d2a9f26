"""The wtag scoring server: ``create_app`` builds the FastAPI app for one ONNX model, ``run`` serves it."""
from __future__ import annotations

from serving.app import create_app, run
from serving.settings import ServerSettings

__all__ = ["ServerSettings", "create_app", "run"]
