"""One module per protocol family, each owning its routes, wire formats and error style; ``serving.app``
assembles them. Adding a protocol: a module with ``routes(service) -> Routes``, listed in ``PROTOCOLS``."""
from __future__ import annotations

from serving.protocols import arrays, info, jets, kserve_v2, mlflow

# Order matters only for speed: the first routes are matched first.
PROTOCOLS = (arrays, kserve_v2, mlflow, jets, info)



def prepare_decoder() -> None:
    """Run in each decode process before its first request: unpickling this function imported every protocol
    module, so the decode functions are loaded and nothing is left to do."""


__all__ = ["PROTOCOLS", "arrays", "info", "jets", "kserve_v2", "mlflow", "prepare_decoder"]
