"""Write fitted settings back into a policy file, keeping its comments and key order."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["edit_policy_file"]


def _plain(value: Any) -> Any:
    """numpy scalars and tuples become YAML-friendly Python values."""
    if hasattr(value, "item") and not isinstance(value, list | dict):
        return value.item()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def edit_policy_file(
    path: str | Path,
    edit: Callable[[Any], None],
    *,
    validate: Callable[[str], object],
) -> str:
    """Apply ``edit`` to the round-trip YAML document of ``path`` and write it back.

    ``edit`` receives the top-level mapping (ruamel ``CommentedMap``) and changes it in place;
    comments, key order and flow styles elsewhere survive. ``validate`` gets the new text
    before anything is written (it should raise on an invalid policy), so a failed edit
    leaves the file untouched. The write is atomic (temporary file + rename).

    Example::

        edit_policy_file("policies/digits.yaml", lambda doc: doc["routing"].update(...),
                         validate=parse_policy)
    """
    from ruamel.yaml import YAML

    path = Path(path)
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 100
    yaml.indent(mapping=2, sequence=4, offset=2)
    document = yaml.load(path.read_text())
    edit(document)
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    text = buffer.getvalue()
    validate(text)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return text


def plain(value: Any) -> Any:
    """Public alias used by calibration to store numpy values."""
    return _plain(value)
