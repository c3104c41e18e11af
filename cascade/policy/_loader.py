"""Load a policy file: YAML → a validated :class:`Policy`, every problem named by file and line.

A bad file fails with one :class:`~cascade.errors.PolicyError` that lists all its problems, one
per line, each as ``{file}:{line} {field.path}: {what is wrong} (allowed: ...)``::

    policies/covertype.yaml:14 routing.chain[1].threshold: must be <= 1, got 1.5
    policies/covertype.yaml:19 tiers.large.model: no such file models/large.onnx (resolved: ...)
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from cascade._files import TEXT_SIDECAR_SUFFIX, beside
from cascade.errors import PolicyError
from cascade.policy._graph import graph_inputs
from cascade.policy._models import (
    BUNDLED_DATASETS,
    RANKING_DATASETS,
    ComplexityRouting,
    Policy,
)

__all__ = ["PolicyFile", "parse_policy", "read_policy"]

Loc = tuple[str | int, ...]

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_FIELD_PATH = re.compile(r"^([A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*|\[\d+\])*): (.+)$", re.DOTALL)
_PATH_PART = re.compile(r"([A-Za-z_][\w-]*)|\[(\d+)\]")
_QUOTED = re.compile(r"'([^']*)'")
_NAME_RULES = {
    r"^[A-Za-z][A-Za-z0-9_-]{0,62}$": "a letter, then up to 62 letters, digits, _ or -",
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$": "a letter or digit, then up to 62 letters, "
    "digits, _ . or -",
}
_INACTIVE: tuple[str, ...] = ()
_LEAVES = "path leaves the policy folder (set allow_outside_paths: true to allow it)"


@dataclass(frozen=True)
class PolicyFile:
    """A validated policy, the text it was read from and the folder its model paths are
    relative to.

    Example::

        loaded = read_policy("policies/digits.yaml")
        loaded.policy.routing.kind          # 'confidence'
        loaded.model_path("tiny")           # PosixPath('/.../policies/models/digits/tiny.onnx')
    """

    policy: Policy
    path: Path | None
    base_dir: Path
    text: str = field(default="", repr=False)

    def model_path(self, tier: str) -> Path:
        """The resolved ONNX file of a local tier; PolicyError for a remote or unknown tier.

        The folder rule is applied again here, so a policy parsed with ``check_files=False``
        still cannot make its reader open a file outside the policy folder.

        Example::

            session = onnxruntime.InferenceSession(loaded.model_path("large"))
        """
        spec = self.policy.tiers.get(tier)
        if spec is None:
            known = ", ".join(self.policy.tiers)
            raise PolicyError(f"unknown tier '{tier}' (tiers: {known})")
        if spec.is_remote:
            raise PolicyError(f"tier '{tier}' is remote ({spec.model}): it has no model file")
        where = f"tiers.{tier}.model"
        if _URL.match(spec.model):
            raise PolicyError(f"{where}: {_bad_scheme(spec.model)}")
        return self._inside(spec.model, where)

    def _inside(self, value: str, where: str) -> Path:
        """``value`` resolved from the policy's folder, under the folder rule: it may leave
        the folder only with ``allow_outside_paths`` (else a PolicyError naming ``where``)."""
        resolved, leaves = _resolve(value, self.base_dir)
        if leaves and not self.policy.allow_outside_paths:
            raise PolicyError(f"{where}: {_LEAVES}")
        return resolved

    def tier_file(self, tier: str, key: Literal["token_file", "ca_bundle"]) -> Path | None:
        """The resolved file a remote tier's ``token_file`` or ``ca_bundle`` names (``None``:
        not set), under the folder rule of model paths: a policy must not make its reader
        send or trust a file from anywhere on the machine unless it says so.

        Example::

            loaded.tier_file("large", "ca_bundle")   # PosixPath('/.../policies/ca.pem')
        """
        value = getattr(self.policy.tiers[tier], key)
        return None if value is None else self._inside(value, f"tiers.{tier}.{key}")

    def log_dir(self) -> Path | None:
        """The resolved folder of the policy's ``log`` section (``None``: no logging), under
        the folder rule of model paths: a served policy must not make its server write
        anywhere on its host unless it says so (``allow_outside_paths``).

        Example::

            loaded.log_dir()   # PosixPath('/.../policies/logs')
        """
        section = self.policy.log
        if section is None:
            return None
        if _URL.match(section.path):
            raise PolicyError(f"log.path: a folder on this machine, got {section.path}")
        return self._inside(section.path, "log.path")

    def shadow_file(self) -> Path | None:
        """The resolved candidate file of the ``shadow`` section (``None``: no section),
        under the folder rule of model paths.

        Example::

            loaded.shadow_file()   # PosixPath('/.../policies/digits-candidate.yaml')
        """
        if self.policy.shadow is None:
            return None
        return self._inside(self.policy.shadow.policy, "shadow.policy")


def read_policy(path: str | os.PathLike[str], *, check_files: bool = True) -> PolicyFile:
    """Read and validate a policy file; model paths are relative to the file's folder.

    With ``check_files`` (the default), every local tier's model file (and the complexity
    scorer's) must exist, stay inside the policy folder and take the same input as the other
    tiers: one tensor, same element type, same width, read from the ONNX graph; a learned
    deferral rule's file must exist and stay inside the folder. When the policy names a
    bundled ``dataset``, missing tier model files are allowed (they are built on first use);
    files that exist are still checked.

    Why model paths may not leave the policy folder (unless ``allow_outside_paths: true``): a
    policy folder is a self-contained unit, shipped to a cluster as a Ray ``runtime_env``, so a
    path outside it would break there; and a server that hot-reloads user-supplied policy files
    must not be made to read arbitrary files of its host through ``../``, absolute paths or
    symlinks.

    Example::

        loaded = read_policy("policies/digits.yaml")
        print(len(loaded.policy.tiers), loaded.policy.routing.kind)
    """
    given = os.fspath(path)
    file = Path(given)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise PolicyError(f"{given}: no such file (resolved: {file.resolve()})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{given}: cannot read: {exc}") from exc
    resolved = file.resolve()
    return _read(text, source=given, path=resolved, base_dir=resolved.parent, check=check_files)


def parse_policy(
    text: str,
    *,
    source: str = "<policy>",
    base_dir: Path | None = None,
    check_files: bool = False,
) -> PolicyFile:
    """Validate policy text; ``source`` names it in messages, ``base_dir`` (default: the
    working directory) is where its model paths start.

    Without ``check_files`` only the schema and the cross-field rules are checked; no file is
    touched (``PolicyFile.model_path`` still applies the folder rule when a path is used).

    Example::

        loaded = parse_policy(text, source="user_config", base_dir=Path("policies"))
    """
    folder = (base_dir if base_dir is not None else Path.cwd()).resolve()
    return _read(text, source=source, path=None, base_dir=folder, check=check_files)


# --- one problem, one line ----------------------------------------------------------------


@dataclass(frozen=True)
class _Problem:
    line: int
    path: str
    text: str

    def format(self, source: str) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{source}:{self.line} {where}{self.text}"


def _fail(source: str, problems: list[_Problem]) -> PolicyError:
    ordered = sorted(problems, key=lambda p: p.line)
    return PolicyError("\n".join(p.format(source) for p in ordered))


def _read(text: str, *, source: str, path: Path | None, base_dir: Path, check: bool) -> PolicyFile:
    root, data, problems = _read_yaml(text, source)
    try:
        policy = Policy.model_validate(data, strict=True)
    except ValidationError as exc:
        problems += [_translate(error, root) for error in exc.errors(include_url=False)]
    problems += _inactive_sections(data, root)
    if problems:
        raise _fail(source, problems)
    problems = _check_dataset(policy, root)
    if check:
        problems += _check_files(policy, root, base_dir)
    if problems:
        raise _fail(source, problems)
    return PolicyFile(policy=policy, path=path, base_dir=base_dir, text=text)


# --- YAML with line numbers ---------------------------------------------------------------


def _read_yaml(text: str, source: str) -> tuple[yaml.MappingNode, dict[str, Any], list[_Problem]]:
    """Compose the node tree (for lines) and construct it with safe_load's semantics; the
    problems are duplicate keys, found before construction inlines ``<<`` merge keys."""
    try:
        loader = yaml.SafeLoader(text)  # its reader refuses control characters already
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}:{_yaml_problem(exc)}") from exc
    duplicates: list[_Problem] = []
    try:
        node = loader.get_single_node()
        if node is not None:
            duplicates = _duplicate_keys(node)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise PolicyError(f"{source}:{_yaml_problem(exc)}") from exc
    finally:
        loader.dispose()
    if node is None:
        raise PolicyError(f"{source}:1 file is empty (a policy needs name, tiers and routing)")
    if not isinstance(node, yaml.MappingNode) or not isinstance(data, dict):
        raise PolicyError(
            f"{source}:{node.start_mark.line + 1} top level: must be a mapping of name, tiers, "
            f"routing, ..., got {_show(data)}"
        )
    return node, data, duplicates


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """``line invalid YAML: problem (context)`` from a scanner, parser or composer error."""
    problem = getattr(exc, "problem", None) or str(exc)
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    mark = getattr(exc, "problem_mark", None) or context_mark
    line = mark.line + 1 if mark is not None else 1
    if context and problem.startswith("but "):
        problem = f"{context} {problem}"
    elif context and context_mark is not None:
        problem += f" ({context} at line {context_mark.line + 1})"
    return f"{line} invalid YAML: {problem}"


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _duplicate_keys(root: yaml.Node) -> list[_Problem]:
    # safe_load keeps the last of two equal keys; a policy with two `large:` tiers is a mistake.
    problems: list[_Problem] = []
    seen: set[int] = set()

    def walk(node: yaml.Node, path: str) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[str, int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else None
                if name is None or key.tag == "tag:yaml.org,2002:merge":
                    continue
                where = f"{path}.{name}" if path else name
                if name in first:
                    problems.append(
                        _Problem(_line(key), where, f"duplicate key (first at line {first[name]})")
                    )
                first.setdefault(name, _line(key))
                walk(value, where)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{path}[{i}]")

    walk(root, "")
    return problems


def _inactive_sections(data: dict[str, Any], root: yaml.MappingNode) -> list[_Problem]:
    # Their schema exists so the file format is designed, not so they are silently ignored.
    present = [name for name in _INACTIVE if data.get(name) is not None and data[name] != []]
    return [
        _Problem(
            _locate((name,), root).line, name, "not active in this release (remove the section)"
        )
        for name in present
    ]


# --- pydantic locations → field paths and lines --------------------------------------------


@dataclass(frozen=True)
class _Place:
    path: str  # dotted, with [i]; union tags dropped
    line: int  # of the last key found; for a missing key, its parent's
    parent: Any  # the type holding the last element (a model class for a missing/extra key)
    type: Any  # the type of the last element, when known
    is_key: bool  # the location is a mapping key itself (pydantic's "[key]")


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional (X | None) off a type."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    args = get_args(tp)
    if args and type(None) in args and get_origin(tp) not in (list, dict):
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _unwrap(rest[0])
    return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tagged_member(union: Any, discriminator: str, tag: str | int) -> Any:
    for member in get_args(union):
        field = member.model_fields.get(discriminator) if _is_model(member) else None
        if field is not None and tag in get_args(field.annotation):
            return member
    return None


def _child(tp: Any, elem: str | int) -> tuple[Any, str | None]:
    """The type of ``elem`` inside ``tp``, and the field's discriminator if it is a tagged union."""
    tp = _unwrap(tp)
    if _is_model(tp) and isinstance(elem, str):
        field = tp.model_fields.get(elem)
        if field is None:
            return None, None
        discriminator = field.discriminator if isinstance(field.discriminator, str) else None
        return field.annotation, discriminator
    origin, args = get_origin(tp), get_args(tp)
    if origin is list and isinstance(elem, int) and args:
        return args[0], None
    if origin is dict and len(args) == 2:
        return args[1], None
    return None, None


def _find_key(node: yaml.MappingNode, elem: str | int) -> tuple[yaml.Node, yaml.Node] | None:
    found = None
    for key, value in node.value:  # the last wins, as in safe_load
        if isinstance(key, yaml.ScalarNode) and key.value == str(elem):
            found = (key, value)
    return found


def _locate(loc: Loc, root: yaml.MappingNode) -> _Place:
    """Walk a pydantic location through the model types and the YAML nodes together."""
    tp: Any = Policy
    parent: Any = None
    node: yaml.Node | None = root
    line = _line(root)
    parts: list[str | int] = []
    tagged: str | None = None
    is_key = False
    for elem in loc:
        if tagged is not None:
            member = _tagged_member(tp, tagged, elem)
            tagged = None
            if member is not None:  # pydantic's inserted tag, not a key of the file
                tp = member
                continue
        if elem == "[key]":
            is_key = True
            continue
        parent = _unwrap(tp)
        tp, tagged = _child(tp, elem)
        parts.append(elem)
        if isinstance(node, yaml.MappingNode) and (pair := _find_key(node, elem)) is not None:
            line, node = _line(pair[0]), pair[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(elem, int) and elem < len(node.value)
        ):
            node = node.value[elem]
            line = _line(node)
        else:
            node = None
    return _Place(_join(parts), line, parent, tp, is_key)


def _join(parts: list[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _split(path: str) -> Loc:
    return tuple(name or int(index) for name, index in _PATH_PART.findall(path))


# --- pydantic messages → our voice ----------------------------------------------------------

_TYPE_NAMES = {
    "float_type": "a number",
    "float_parsing": "a number",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "finite_number": "a finite number",
}
_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _show(value: Any) -> str:
    """A value as the user wrote it, in YAML's terms."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, date):
        return f"a date ({value.isoformat()}; quote it to make it a string)"
    text = repr(value) if isinstance(value, str | float) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _tags(union: Any, discriminator: str) -> list[str]:
    out: list[str] = []
    for member in get_args(_unwrap(union)):
        if _is_model(member) and discriminator in member.model_fields:
            out += [str(a) for a in get_args(member.model_fields[discriminator].annotation)]
    return out


def _translate(error: ErrorDetails, root: yaml.MappingNode) -> _Problem:
    kind, loc, value = error["type"], tuple(error["loc"]), error["input"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    place = _locate(loc, root)
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        discriminator = str(ctx.get("discriminator", "kind")).strip("'")
        at = _locate((*loc, discriminator), root)
        allowed = _QUOTED.findall(str(ctx.get("expected_tags", ""))) or _tags(
            place.type, discriminator
        )
        if kind == "union_tag_not_found":
            return _Problem(at.line, at.path, f"required (one of {', '.join(allowed)})")
        got = value.get(discriminator) if isinstance(value, dict) else value
        return _Problem(at.line, at.path, f"must be one of {', '.join(allowed)}, got {_show(got)}")
    if kind in ("value_error", "assertion_error"):
        return _cross_field(error, loc, place, root)
    text = _describe(kind, ctx, value, place, error["msg"], key=str(loc[-1]) if loc else "")
    return _Problem(place.line, place.path, text)


def _describe(
    kind: str, ctx: dict[str, Any], value: Any, place: _Place, msg: str, *, key: str
) -> str:
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        fields = ", ".join(place.parent.model_fields) if _is_model(place.parent) else ""
        return f"unknown key '{key}'" + (f" (allowed: {fields})" if fields else "")
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return f"must be {_BOUNDS[kind]} {_number(bound)}, got {_show(value)}"
    if kind in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[kind]}, got {_show(value)}"
    if kind == "literal_error":
        allowed = _QUOTED.findall(str(ctx.get("expected", "")))
        return f"must be one of {', '.join(allowed)}, got {_show(value)}"
    if kind in ("too_short", "string_too_short"):
        least = int(ctx.get("min_length", 1))
        if least == 1:
            return "must not be empty"
        unit = "characters" if kind == "string_too_short" else "items"
        return f"must have at least {least} {unit}, got {ctx.get('actual_length', len(value))}"
    if kind in ("too_long", "string_too_long"):
        unit = "characters" if kind == "string_too_long" else "items"
        return f"must have at most {ctx.get('max_length')} {unit}, got {ctx.get('actual_length')}"
    if kind == "string_pattern_mismatch":
        pattern = str(ctx.get("pattern", ""))
        rule = _NAME_RULES.get(pattern, f"a match of {pattern}")
        if place.is_key:
            return f"name {_show(value)} is not allowed (allowed: {rule})"
        return f"must be {rule}, got {_show(value)}"
    text = msg.replace("Input should be", "must be")
    return f"{text[:1].lower()}{text[1:]}, got {_show(value)}"


def _cross_field(error: ErrorDetails, loc: Loc, place: _Place, root: yaml.MappingNode) -> _Problem:
    """A model validator's ValueError; a leading ``field.path: `` in it names the field."""
    cause = (error.get("ctx") or {}).get("error")
    text = str(cause) if cause is not None else error["msg"].removeprefix("Value error, ")
    match = _FIELD_PATH.match(text)
    if match and _is_model(_unwrap(place.type)):
        sub = _split(match.group(1))
        if sub and sub[0] in _unwrap(place.type).model_fields:
            at = _locate((*loc, *sub), root)
            return _Problem(at.line, at.path, match.group(2))
    return _Problem(place.line, place.path, text)


# --- checks beyond the schema ---------------------------------------------------------------


def _check_dataset(policy: Policy, root: yaml.MappingNode) -> list[_Problem]:
    if policy.dataset is None:
        return []
    bundled = [*BUNDLED_DATASETS, *RANKING_DATASETS]
    if policy.dataset in RANKING_DATASETS and not policy.stages:
        text = f"'{policy.dataset}' is a ranking dataset: the policy needs stages"
        return [_Problem(_locate(("dataset",), root).line, "dataset", text)]
    if policy.dataset in bundled:
        return []
    text = f"unknown dataset '{policy.dataset}' (allowed: {', '.join(bundled)})"
    return [_Problem(_locate(("dataset",), root).line, "dataset", text)]


def _bad_scheme(value: str) -> str:
    scheme = value.split("://", 1)[0]
    return (
        f"unsupported URL scheme '{scheme}://' "
        "(allowed: http://, https://, or a file path relative to the policy)"
    )


def _resolve(value: str, base_dir: Path) -> tuple[Path, bool]:
    """The resolved path, and whether it leaves ``base_dir`` (``..``, absolute, symlinks)."""
    raw, base = Path(value), base_dir.resolve()
    resolved = (base / raw).resolve()
    lexical = os.path.normpath(value).split(os.sep)[0] == ".."
    return resolved, raw.is_absolute() or lexical or not resolved.is_relative_to(base)


@dataclass(frozen=True)
class _Input:
    element: str  # "float"
    width: int | None


def _read_input(path: Path) -> _Input | str:
    """The single graph input of an ONNX file, or what is wrong with it.

    A text model (a ``.text.json`` sidecar beside the file says how texts become the
    graph's inputs) takes texts, whatever its graph's inputs are.
    """
    if beside(path, TEXT_SIDECAR_SUFFIX).is_file():
        return _Input(element="string", width=None)
    try:
        inputs = graph_inputs(path.read_bytes())
    except (OSError, ValueError) as exc:
        return f"not a readable ONNX model ({type(exc).__name__}: {exc})"
    if len(inputs) != 1:
        return f"has {len(inputs)} inputs (allowed: 1, a [rows, features] tensor)"
    (graph_input,) = inputs
    if graph_input.element is None:
        return "its input is not a tensor (allowed: a [rows, features] tensor)"
    dims = graph_input.dims
    return _Input(element=graph_input.element, width=dims[-1] if len(dims) >= 2 else None)


def _model_files(policy: Policy) -> Iterator[tuple[Loc, str, str]]:
    """(location, owner, value) of every model reference: the tiers', then the scorer's."""
    for name, tier in policy.tiers.items():
        yield ("tiers", name, "model"), f"tier '{name}'", tier.model
    routing = policy.routing
    if isinstance(routing, ComplexityRouting) and routing.scorer.model is not None:
        yield ("routing", "scorer", "model"), "the scorer", routing.scorer.model
    for k, step in enumerate(getattr(routing, "chain", [])):
        if step.deferral is not None and step.deferral.model is not None:
            loc = ("routing", "chain", k, "deferral", "model")
            yield loc, f"the deferral rule of '{step.tier}'", step.deferral.model


def _check_reference(
    value: str, *, is_tier: bool, base_dir: Path, outside_ok: bool, missing_ok: bool
) -> Path | str | None:
    """The model file a reference names; else what is wrong with it, or None: nothing to read
    (a remote tier, or a missing file that will be built)."""
    if _URL.match(value):
        if not is_tier:
            return "must be a file path relative to the policy, not a URL"
        if not value.startswith(("http://", "https://")):
            return _bad_scheme(value)
        return None if urlsplit(value).hostname else "URL has no host (allowed: http://HOST/...)"
    try:
        resolved, leaves = _resolve(value, base_dir)
    except (OSError, ValueError, RuntimeError) as exc:  # e.g. NUL bytes, symlink loops
        return f"not a usable path {value!r} ({exc})"
    if leaves and not outside_ok:
        return _LEAVES
    if not resolved.exists():
        return None if missing_ok else f"no such file {value} (resolved: {resolved})"
    if not resolved.is_file():
        return f"not a file: {value} (resolved: {resolved})"
    return resolved


def _compare(found: _Input, owner: str, want: _Input) -> str | None:
    if found.element != want.element:
        return f"input type {found.element} differs from {owner} ({want.element})"
    if None not in (found.width, want.width) and found.width != want.width:
        return f"input width {found.width} differs from {owner} ({want.width})"
    return None


def _check_files(policy: Policy, root: yaml.MappingNode, base_dir: Path) -> list[_Problem]:
    problems: list[_Problem] = []
    reference: tuple[str, _Input] | None = None  # the first readable model and its owner
    for loc, owner, value in _model_files(policy):
        found: Path | _Input | str | None = _check_reference(
            value,
            is_tier=loc[0] == "tiers",
            base_dir=base_dir,
            outside_ok=policy.allow_outside_paths,
            # a bundled dataset's tiers are built on first use; a deferral rule never is
            missing_ok=policy.dataset is not None and "deferral" not in loc,
        )
        if isinstance(found, Path):
            # a deferral rule reads tier outputs, not the rows: its input is its own
            found = _read_input(found) if "deferral" not in loc else None
        if isinstance(found, _Input):
            if reference is None:
                reference, found = (owner, found), None
            else:
                found = _compare(found, *reference)
        if isinstance(found, str):
            place = _locate(loc, root)
            problems.append(_Problem(place.line, place.path, found))
    if policy.log is not None:  # a folder written to: the rule of files read holds for it
        try:
            PolicyFile(policy=policy, path=None, base_dir=base_dir).log_dir()
        except PolicyError as exc:
            place = _locate(("log", "path"), root)
            problems.append(_Problem(place.line, place.path, str(exc).split(": ", 1)[1]))
    return problems
