"""The JSON Schema of policy files, for editors (completion, inline errors) and CI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cascade.policy._models import Policy

__all__ = ["SCHEMA_ID", "policy_json_schema", "write_schema"]

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_ID = "urn:cascade:policy"


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a policy file, generated from the pydantic models.

    Example::

        schema = policy_json_schema()
        sorted(schema["required"])  # ['name', 'routing', 'tiers']
    """
    schema = Policy.model_json_schema()
    schema.pop("title", None)
    return {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, "title": "cascade policy", **schema}


def write_schema(path: str | os.PathLike[str]) -> Path:
    """Write :func:`policy_json_schema` as stable JSON (sorted keys, indent 2, final newline).

    A policy file points its editor at it with a first line
    ``# yaml-language-server: $schema=policy.schema.json``.

    Example::

        write_schema("policies/policy.schema.json")
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(policy_json_schema(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    out.write_text(text, encoding="utf-8")
    return out
