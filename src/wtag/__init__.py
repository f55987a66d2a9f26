"""wtag: boosted W-boson jet tagging on 2011 CMS Open Data style jets, tracked with MLflow."""
from __future__ import annotations

__version__ = "0.1.0"
