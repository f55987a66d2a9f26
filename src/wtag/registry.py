"""The Model Registry side of export: register an exported ONNX model, move an alias, keep the alias history.

The alias moves only when the caller says so, after every check passed, so a failed export leaves production
where it was.
"""
from __future__ import annotations

import datetime
import json
import math
import sys
from collections.abc import Mapping
from typing import Any

from wtag.schema import Tag

ALIAS_HISTORY_MAX_CHARS = 4000




def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def existing_version(model_name: str, source_run_id: str) -> Any | None:
    """The registered version exported from ``source_run_id``, if any (oldest first: the one to keep)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.search_model_versions(
        f"name = '{model_name}' and tags.`{Tag.SOURCE_RUN_ID}` = '{source_run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


def _alias_version(model_name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return MlflowClient().get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def move_alias(model_name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` and keep the history in tags.

    The new version gets ``wtag.alias.<alias>.since``, the one it replaces ``wtag.alias.<alias>.until`` and
    ``...replaced_by``; the registered model's ``wtag.alias_history.<alias>`` holds a JSON list of
    ``{version, source_run_id, tagger, since, previous}`` (the newest entries, bounded in size).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    current = _alias_version(model_name, alias)
    if current is not None and str(current.version) == str(version):
        return
    now = _now()
    new = client.get_model_version(model_name, version)
    client.set_registered_model_alias(model_name, alias, version)
    client.set_model_version_tag(model_name, version, Tag.alias(alias, "since"), now)
    if current is not None:
        client.set_model_version_tag(model_name, current.version, Tag.alias(alias, "until"), now)
        client.set_model_version_tag(model_name, current.version, Tag.alias(alias, "replaced_by"), str(version))
    key = Tag.alias_history(alias)
    try:
        history = json.loads(client.get_registered_model(model_name).tags.get(key, "[]"))
    except ValueError:
        history = []
    history.append({"version": str(version), "source_run_id": new.tags.get(Tag.SOURCE_RUN_ID, ""),
                    "tagger": new.tags.get(Tag.TAGGER, ""), "since": now,
                    "previous": None if current is None else str(current.version)})
    while len(history) > 1 and len(json.dumps(history)) > ALIAS_HISTORY_MAX_CHARS:
        history.pop(0)
    client.set_registered_model_tag(model_name, key, json.dumps(history))
    print(f"export: alias '{alias}' of '{model_name}' -> version {version}"
          + (f" (was {current.version})" if current is not None else ""), file=sys.stderr)


def register_version(model_uri: str, model_name: str, tags: Mapping[str, str], description: str) -> str:
    """Create a registered model version (with tags and description) and return its version number."""
    import mlflow
    from mlflow.tracking import MlflowClient

    version = mlflow.register_model(model_uri, model_name, tags=dict(tags))
    MlflowClient().update_model_version(model_name, version.version, description=description)
    return str(version.version)


def register_export(export_run: Any, model_name: str, diff_threshold: float) -> str:
    """Register the ONNX model an export run logged; the version's tags and description say where it came from."""
    tags, figures = export_run.data.tags, export_run.data.metrics
    version_tags = {k: tags[k] for k in (Tag.SOURCE_RUN_ID, Tag.TAGGER, Tag.FAMILY, Tag.DATASET_DIGEST) if k in tags}
    version_tags[Tag.EXPORT_RUN_ID] = export_run.info.run_id
    max_diff, frac = figures.get("onnx_max_abs_diff", math.nan), figures.get("onnx_frac_diff", math.nan)
    version_tags.update({Tag.ONNX_MAX_ABS_DIFF: f"{max_diff:.3g}", Tag.ONNX_FRAC_DIFF: f"{frac:.4g}"})
    description = (f"{tags.get(Tag.TAGGER, '?')} tagger from run {tags.get(Tag.SOURCE_RUN_ID, '?')} (dataset "
                   f"{tags.get(Tag.DATASET_DIGEST, '?')[:12]}); ONNX parity on "
                   f"{int(figures.get('onnx_parity_jets', 0))} test jets: max |diff| {max_diff:.3g}, {frac:.2%} "
                   f"above {diff_threshold:g}")
    return register_version(tags[Tag.MODEL_URI], model_name, version_tags, description)
