"""Policy files: loading, file:line errors, file checks, the JSON Schema and `cascade policy`."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper
from sklearn.datasets import load_digits, load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cascade.cli import main
from cascade.errors import PolicyError
from cascade.policy import (
    ComplexityRouting,
    ConfidenceRouting,
    PolicyFile,
    parse_policy,
    policy_json_schema,
    read_policy,
    write_schema,
)
from cascade.zoo.export import sklearn_to_onnx

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
SCHEMA_FILE = POLICIES / "policy.schema.json"
SCHEMA_LINE = "# yaml-language-server: $schema=policy.schema.json"

TIER_KEYS = (
    "model, cost, placement, batching, replicas, autoscaling, resources, max_ongoing_requests, "
    "max_queued_requests, providers, timeout_ms, breaker, latency_ms, token_env, token_file, "
    "ca_bundle"
)

CONFIDENCE = """\
name: digits
tiers:
  tiny: {model: models/tiny.onnx}
  large: {model: models/large.onnx, placement: deployment}
routing:
  kind: confidence
  measure: margin
  chain:
    - {tier: tiny, threshold: 0.9}
    - {tier: large}
"""

COMPLEXITY = """\
name: digits-complexity
tiers:
  tiny: {model: models/tiny.onnx}
  large: {model: models/large.onnx}
routing:
  kind: complexity
  scorer: {name: onnx, model: models/scorer.onnx}
  bands:
    - {tier: tiny, below: 0.3}
    - {tier: large}
"""

SLA = """\
name: digits-sla
tiers:
  tiny: {model: models/tiny.onnx, latency_ms: 0.05}
  large: {model: models/large.onnx, latency_ms: 2}
routing:
  kind: sla
  default_deadline_ms: 20
  chain:
    - tier: tiny
      threshold: 0.8
      calibration: {method: temperature, temperature: 1.5}
    - {tier: large}
"""

SPECULATIVE = """\
name: digits-speculative
tiers:
  tiny: {model: models/tiny.onnx}
  large: {model: models/large.onnx, placement: deployment, replicas: 2}
routing:
  kind: speculative
  cheap: tiny
  expensive: large
  threshold: 0.95
  calibration: {method: isotonic, x: [0, 0.5, 1], y: [0, 0.4, 1]}
"""


# --- fixtures -------------------------------------------------------------------------------


def _tensor_model(*inputs: tuple[str, int, list[int | str | None]]) -> onnx.ModelProto:
    """A real (if trivial) ONNX graph with the given inputs: their sum, or the one input."""
    values = [helper.make_tensor_value_info(n, t, shape) for n, t, shape in inputs]
    op = "Sum" if len(inputs) > 1 else "Identity"
    node = helper.make_node(op, [n for n, _, _ in inputs], ["out"])
    out = helper.make_tensor_value_info("out", inputs[0][1], [None, None])
    graph = helper.make_graph([node], "g", values, [out])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small real models: logistic regressions on digits (64 features) and wine (13)."""
    folder = tmp_path_factory.mktemp("policy-models")
    digits, wine = load_digits(), load_wine()
    fitted = {
        "tiny": (make_pipeline(StandardScaler(), LogisticRegression(C=0.01)), digits, 64),
        "large": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), digits, 64),
        "wine": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), wine, 13),
    }
    files: dict[str, Path] = {}
    for name, (model, data, width) in fitted.items():
        model.fit(data.data, data.target)
        files[name] = folder / f"{name}.onnx"
        onnx.save(sklearn_to_onnx(model, n_features=width), files[name])
    files["double"] = folder / "double.onnx"
    onnx.save(_tensor_model(("x", TensorProto.DOUBLE, [None, 64])), files["double"])
    files["two-inputs"] = folder / "two-inputs.onnx"
    onnx.save(
        _tensor_model(("a", TensorProto.FLOAT, [None, 64]), ("b", TensorProto.FLOAT, [None, 64])),
        files["two-inputs"],
    )
    files["garbage"] = folder / "garbage.onnx"
    files["garbage"].write_bytes(b"this is not a protobuf \xff\xfe")
    return files


@pytest.fixture
def folder(tmp_path: Path, onnx_files: dict[str, Path]) -> Path:
    """A policy folder with models/tiny.onnx, large.onnx and scorer.onnx (all 64 wide)."""
    models = tmp_path / "pol" / "models"
    models.mkdir(parents=True)
    for target, source in [("tiny", "tiny"), ("large", "large"), ("scorer", "tiny")]:
        shutil.copy(onnx_files[source], models / f"{target}.onnx")
    return tmp_path / "pol"


def _write(folder: Path, text: str, *, name: str = "policy.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def _exactly(path: Path | str, *lines: str) -> str:
    """A regex matching exactly these message lines, each prefixed with `path:`."""
    return "^" + re.escape("\n".join(f"{path}:{line}" for line in lines)) + "$"


# --- valid policies -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (CONFIDENCE, "confidence"),
        (COMPLEXITY, "complexity"),
        (SLA, "sla"),
        (SPECULATIVE, "speculative"),
    ],
)
def test_a_valid_policy_of_each_routing_kind_loads(folder: Path, text: str, kind: str) -> None:
    path = _write(folder, text)
    loaded = read_policy(path)
    assert isinstance(loaded, PolicyFile)
    assert loaded.policy.routing.kind == kind
    assert loaded.path == path.resolve()
    assert loaded.base_dir == folder.resolve()
    assert loaded.model_path("large") == (folder / "models" / "large.onnx").resolve()
    assert list(loaded.policy.tiers) == ["tiny", "large"]


def test_defaults_and_types_of_a_loaded_policy(folder: Path) -> None:
    policy = read_policy(_write(folder, CONFIDENCE)).policy
    assert isinstance(policy.routing, ConfidenceRouting)
    assert policy.routing.measure == "margin"
    assert [s.threshold for s in policy.routing.chain] == [0.9, None]
    assert policy.tiers["tiny"].placement == "inline"
    assert policy.tiers["tiny"].batching.max_batch_size == 32
    assert policy.tiers["large"].providers == ["CPUExecutionProvider"]


def test_complexity_scorer_model_is_read(folder: Path) -> None:
    policy = read_policy(_write(folder, COMPLEXITY)).policy
    assert isinstance(policy.routing, ComplexityRouting)
    assert policy.routing.scorer.model == "models/scorer.onnx"


def test_remote_tiers_skip_the_file_checks(folder: Path) -> None:
    text = CONFIDENCE.replace(
        "{model: models/large.onnx, placement: deployment}",
        "{model: 'https://models.example:8443/v2/models/large', cost: 1}",
    )
    loaded = read_policy(_write(folder, text))
    with pytest.raises(PolicyError, match=r"^tier 'large' is remote \(https://models\.example"):
        loaded.model_path("large")
    with pytest.raises(PolicyError, match=r"^unknown tier 'huge' \(tiers: tiny, large\)$"):
        loaded.model_path("huge")


def test_a_remote_tier_cannot_be_a_deployment(folder: Path) -> None:
    text = CONFIDENCE.replace(
        "{model: models/large.onnx, placement: deployment}",
        "{model: 'http://cluster:8000/v2/models/covertype', placement: deployment}",
    )
    with pytest.raises(PolicyError, match="runs where its URL points; placement: deployment"):
        read_policy(_write(folder, text))


def test_parse_policy_checks_no_files_unless_asked(tmp_path: Path) -> None:
    loaded = parse_policy(CONFIDENCE, base_dir=tmp_path)
    assert loaded.path is None and loaded.base_dir == tmp_path.resolve()
    assert loaded.model_path("tiny") == (tmp_path / "models" / "tiny.onnx").resolve()
    resolved = (tmp_path / "models" / "tiny.onnx").resolve()
    with pytest.raises(
        PolicyError,
        match=_exactly(
            "user_config",
            f"3 tiers.tiny.model: no such file models/tiny.onnx (resolved: {resolved})",
            f"4 tiers.large.model: no such file models/large.onnx (resolved: "
            f"{resolved.with_name('large.onnx')})",
        ),
    ):
        parse_policy(CONFIDENCE, source="user_config", base_dir=tmp_path, check_files=True)


def test_model_path_keeps_the_folder_rule_without_file_checks(tmp_path: Path) -> None:
    loaded = parse_policy(CONFIDENCE.replace("models/tiny.onnx", "../tiny.onnx"), base_dir=tmp_path)
    with pytest.raises(PolicyError, match=r"^tiers\.tiny\.model: path leaves the policy folder"):
        loaded.model_path("tiny")


# --- schema errors, with lines --------------------------------------------------------------


def test_unknown_key(folder: Path) -> None:
    text = CONFIDENCE.replace("{tier: tiny, threshold: 0.9}", "{tier: tiny, treshold: 0.9}")
    path = _write(folder, text)
    with pytest.raises(
        PolicyError,
        match=_exactly(
            path,
            "9 routing.chain[0].treshold: unknown key 'treshold' "
            "(allowed: tier, threshold, calibration, deferral)",
        ),
    ):
        read_policy(path)


def test_unknown_key_in_a_tier_lists_the_tier_fields(folder: Path) -> None:
    path = _write(folder, CONFIDENCE.replace("{model: models/tiny.onnx}", "{model: m, batch: 4}"))
    match = _exactly(path, f"3 tiers.tiny.batch: unknown key 'batch' (allowed: {TIER_KEYS})")
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_threshold_out_of_range(folder: Path) -> None:
    path = _write(folder, CONFIDENCE.replace("threshold: 0.9", "threshold: 1.5"))
    with pytest.raises(
        PolicyError, match=_exactly(path, "9 routing.chain[0].threshold: must be <= 1, got 1.5")
    ):
        read_policy(path)


CHAIN = "  chain:\n    - {tier: tiny, threshold: 0.9}\n    - {tier: large}"
LARGE = "  large: {model: models/large.onnx, placement: deployment}\n"
NAME_RULE = "a letter, then up to 62 letters, digits, _ or -"
# id: (text replaced in CONFIDENCE, replacement, the expected line)
FIELD_ERRORS = {
    "nan": ("0.9", ".nan", "9 routing.chain[0].threshold: must be a finite number, got nan"),
    "quoted-number": ("0.9", "'0.9'", "9 routing.chain[0].threshold: must be a number, got '0.9'"),
    "bool-number": ("0.9", "yes", "9 routing.chain[0].threshold: must be a number, got true"),
    "ge": (
        "deployment}",
        "deployment, replicas: 0}",
        "4 tiers.large.replicas: must be >= 1, got 0",
    ),
    "gt": ("deployment}", "deployment, cost: 0}", "4 tiers.large.cost: must be > 0, got 0"),
    "int": (
        "deployment}",
        "deployment, replicas: 2.5}",
        "4 tiers.large.replicas: must be an integer, got 2.5",
    ),
    "literal": (
        "placement: deployment",
        "placement: remote",
        "4 tiers.large.placement: must be one of inline, deployment, got 'remote'",
    ),
    "measure": (
        "measure: margin",
        "measure: foo",
        "7 routing.measure: must be one of max_prob, margin, entropy, got 'foo'",
    ),
    "name-pattern": (
        "name: digits",
        "name: 'my policy'",
        "1 name: must be a letter or digit, then up to 62 letters, digits, _ . or -, "
        "got 'my policy'",
    ),
    "tier-name": (
        LARGE,
        LARGE + "  2fast: {model: models/tiny.onnx}\n",
        f"5 tiers.2fast: name '2fast' is not allowed (allowed: {NAME_RULE})",
    ),
    "empty-string": (
        "{model: models/tiny.onnx}",
        "{model: ''}",
        "3 tiers.tiny.model: must not be empty",
    ),
    "nested": (
        "{model: models/tiny.onnx}",
        "{model: models/tiny.onnx, batching: {max_batch_size: 0}}",
        "3 tiers.tiny.batching.max_batch_size: must be >= 1, got 0",
    ),
    "empty-list": (CHAIN, "  chain: []", "8 routing.chain: must not be empty"),
    "list": (CHAIN, "  chain: tiny", "8 routing.chain: must be a list, got 'tiny'"),
    "mapping": (LARGE, "  large:\n", "4 tiers.large: must be a mapping, got null"),
}


@pytest.mark.parametrize(("old", "new", "line"), FIELD_ERRORS.values(), ids=FIELD_ERRORS.keys())
def test_field_errors_in_our_voice(folder: Path, old: str, new: str, line: str) -> None:
    assert old in CONFIDENCE
    path = _write(folder, CONFIDENCE.replace(old, new))
    with pytest.raises(PolicyError, match=_exactly(path, line)):
        read_policy(path)


def test_missing_required_key_points_at_the_parent(folder: Path) -> None:
    path = _write(folder, CONFIDENCE.replace("{model: models/tiny.onnx}", "{cost: 0.1}"))
    with pytest.raises(PolicyError, match=_exactly(path, "3 tiers.tiny.model: required")):
        read_policy(path)
    path = _write(folder, CONFIDENCE.replace("name: digits\n", "# no name\n"))
    with pytest.raises(PolicyError, match=_exactly(path, "2 name: required")):
        read_policy(path)


def test_bad_routing_kind(folder: Path) -> None:
    path = _write(folder, CONFIDENCE.replace("kind: confidence", "kind: magic"))
    match = _exactly(
        path, "6 routing.kind: must be one of confidence, complexity, sla, speculative, got 'magic'"
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_missing_routing_kind(folder: Path) -> None:
    path = _write(folder, CONFIDENCE.replace("  kind: confidence\n", ""))
    match = _exactly(
        path, "5 routing.kind: required (one of confidence, complexity, sla, speculative)"
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_unknown_tier_in_the_chain(folder: Path) -> None:
    path = _write(folder, CONFIDENCE.replace("- {tier: large}", "- {tier: huge}"))
    match = _exactly(path, "10 routing.chain[1].tier: unknown tier 'huge' (tiers: tiny, large)")
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_unknown_tier_in_speculative_routing(folder: Path) -> None:
    path = _write(folder, SPECULATIVE.replace("expensive: large", "expensive: big"))
    match = _exactly(path, "8 routing.expensive: unknown tier 'big' (tiers: tiny, large)")
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_duplicated_tier_in_the_chain(folder: Path) -> None:
    path = _write(folder, CONFIDENCE.replace("- {tier: large}", "- {tier: tiny}"))
    match = _exactly(path, "5 routing: a tier may appear once in the chain, repeated: ['tiny']")
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_missing_threshold_on_a_step_that_is_not_last(folder: Path) -> None:
    path = _write(folder, CONFIDENCE.replace("{tier: tiny, threshold: 0.9}", "{tier: tiny}"))
    match = _exactly(
        path, "5 routing: chain step 'tiny' needs a threshold (only the last may omit it)"
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_complexity_bands_must_increase(folder: Path) -> None:
    text = COMPLEXITY.replace(
        "    - {tier: tiny, below: 0.3}\n",
        "    - {tier: tiny, below: 0.5}\n    - {tier: tiny, below: 0.4}\n",
    )
    path = _write(folder, text)
    with pytest.raises(
        PolicyError, match=_exactly(path, "5 routing: band bounds must increase, got [0.5, 0.4]")
    ):
        read_policy(path)


def test_complexity_last_band_takes_the_rest(folder: Path) -> None:
    path = _write(folder, COMPLEXITY.replace("- {tier: large}", "- {tier: large, below: 0.9}"))
    match = _exactly(path, "5 routing: the last band takes the remaining scores: omit its `below`")
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_complexity_scorer_parameters(folder: Path) -> None:
    path = _write(
        folder, COMPLEXITY.replace("{name: onnx, model: models/scorer.onnx}", "{name: onnx}")
    )
    with pytest.raises(
        PolicyError, match=_exactly(path, "7 routing.scorer: scorer onnx needs `model`")
    ):
        read_policy(path)
    path = _write(folder, COMPLEXITY.replace("name: onnx", "name: magic"))
    match = _exactly(
        path,
        "7 routing.scorer: unknown scorer 'magic' (allowed: onnx, feature, or "
        "'package.module:Class')",
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(path)
    out_of_tree = COMPLEXITY.replace(
        "{name: onnx, model: models/scorer.onnx}",
        "{name: 'mypkg.scorers:Length', params: {cap: 3}}",
    )
    assert read_policy(_write(folder, out_of_tree)).policy.routing.kind == "complexity"


def test_autoscaling_max_below_min(folder: Path) -> None:
    text = CONFIDENCE.replace(
        "placement: deployment}",
        "placement: deployment,\n          autoscaling: {min_replicas: 4, max_replicas: 2}}",
    )
    path = _write(folder, text)
    match = _exactly(
        path, "5 tiers.large.autoscaling: max_replicas (2) must be >= min_replicas (4)"
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


@pytest.mark.parametrize(
    ("autoscaling", "problem"),
    [
        (
            "{min_replicas: 1, max_replicas: 3, initial_replicas: 5}",
            "tiers.large.autoscaling: initial_replicas (5) must lie within min_replicas (1) "
            "and max_replicas (3)",
        ),
        (
            "{look_back_period_s: 5}",
            "tiers.large.autoscaling.look_back_period_s: must be > 10, got 5",
        ),
    ],
)
def test_autoscaling_settings_serve_would_refuse(
    folder: Path, autoscaling: str, problem: str
) -> None:
    text = CONFIDENCE.replace(
        "placement: deployment}", f"placement: deployment,\n          autoscaling: {autoscaling}}}"
    )
    with pytest.raises(PolicyError, match=re.escape(problem)):
        read_policy(_write(folder, text))


@pytest.mark.parametrize(
    ("knots", "problem"),
    [
        ("x: [0, 0.5, 1], y: [0, 1]", "isotonic knots need equal lengths >= 2, got x 3, y 2"),
        ("x: [0, 0.7, 0.5], y: [0, 0.4, 1]", "isotonic knots `x` and `y` must be non-decreasing"),
        ("x: [0, 0.5, 1.5], y: [0, 0.4, 1]", "isotonic knots must lie in [0, 1]"),
        ("x: [0, 1]", "method isotonic needs knots `x` and `y`"),
        ("x: [0, 1], y: [0, 1], temperature: 2", "method isotonic takes no `temperature`"),
    ],
)
def test_isotonic_calibration_knots(folder: Path, knots: str, problem: str) -> None:
    path = _write(folder, SPECULATIVE.replace("x: [0, 0.5, 1], y: [0, 0.4, 1]", knots))
    with pytest.raises(PolicyError, match=_exactly(path, f"10 routing.calibration: {problem}")):
        read_policy(path)


def test_duplicate_yaml_keys(folder: Path) -> None:
    text = CONFIDENCE.replace(
        "  large: {model: models/large.onnx, placement: deployment}\n",
        "  large: {model: models/large.onnx, placement: deployment}\n  tiny: {model: other.onnx}\n",
    )
    path = _write(folder, text)
    with pytest.raises(
        PolicyError, match=_exactly(path, "5 tiers.tiny: duplicate key (first at line 3)")
    ):
        read_policy(path)


def test_yaml_syntax_error(folder: Path) -> None:
    path = _write(folder, CONFIDENCE.replace("  measure: margin\n", "  measure: [margin\n"))
    with pytest.raises(PolicyError, match=rf"^{re.escape(str(path))}:8 invalid YAML: "):
        read_policy(path)


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing here\n"])
def test_empty_file(folder: Path, text: str) -> None:
    path = _write(folder, text)
    match = _exactly(path, "1 file is empty (a policy needs name, tiers and routing)")
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_top_level_must_be_a_mapping(folder: Path) -> None:
    path = _write(folder, "# a list\n- tiny\n- large\n")
    match = _exactly(
        path, "2 top level: must be a mapping of name, tiers, routing, ..., got a list"
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_missing_policy_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError, match=f"^{re.escape(str(path))}: no such file"):
        read_policy(path)


def test_several_errors_are_reported_together_in_line_order(folder: Path) -> None:
    text = (
        CONFIDENCE.replace("{model: models/tiny.onnx}", "{model: models/tiny.onnx, cost: -1}")
        .replace("measure: margin", "measure: mean")
        .replace("threshold: 0.9", "threshold: 2")
        .replace("{tier: large}", "{tier: large, calibrate: true}")
    )
    path = _write(folder, text + "cache: {exact_max_entries: -1}\n")
    match = _exactly(
        path,
        "3 tiers.tiny.cost: must be > 0, got -1",
        "7 routing.measure: must be one of max_prob, margin, entropy, got 'mean'",
        "9 routing.chain[0].threshold: must be <= 1, got 2",
        "10 routing.chain[1].calibrate: unknown key 'calibrate' (allowed: tier, threshold, "
        "calibration, deferral)",
        "11 cache.exact_max_entries: must be >= 0, got -1",
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_a_cache_section_is_active_and_checked(folder: Path) -> None:
    cached = "cache: {exact_max_entries: 1000, similarity: {threshold: 0.9}}\n"
    policy = read_policy(_write(folder, CONFIDENCE + cached)).policy
    assert policy.cache is not None and policy.cache.similarity is not None
    assert policy.cache.similarity.threshold == 0.9
    bad = "cache: {similarity: {threshold: 1.5}}\n"
    match = _exactly(
        _write(folder, CONFIDENCE + bad), "11 cache.similarity.threshold: must be <= 1, got 1.5"
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(folder / "policy.yaml")


def test_a_profile_section_samples_a_share_of_requests(folder: Path) -> None:
    policy = read_policy(_write(folder, CONFIDENCE + "profile: {sample_rate: 0.01}\n")).policy
    assert policy.profile is not None and policy.profile.sample_rate == 0.01
    assert read_policy(_write(folder, CONFIDENCE)).policy.profile is None
    match = _exactly(
        _write(folder, CONFIDENCE + "profile: {sample_rate: 2}\n"),
        "11 profile.sample_rate: must be <= 1, got 2",
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(folder / "policy.yaml")


def test_gears_must_rise_and_name_known_tiers(folder: Path) -> None:
    ok = "gears:\n  - {name: busy, queue_depth_at_least: 8, threshold_shift: 0.1}\n"
    ok += "  - {name: swamped, queue_depth_at_least: 32, max_tier: tiny}\n"
    assert [g.name for g in read_policy(_write(folder, CONFIDENCE + ok)).policy.gears] == [
        "busy",
        "swamped",
    ]
    falling = ok.replace("32", "4")
    with pytest.raises(PolicyError, match=r"must rise strictly from gear to gear, got \[8, 4\]"):
        read_policy(_write(folder, CONFIDENCE + falling))
    unknown = ok.replace("max_tier: tiny", "max_tier: huge")
    with pytest.raises(PolicyError, match=r"gears\[1\]\.max_tier: unknown tier 'huge'"):
        read_policy(_write(folder, CONFIDENCE + unknown))


def test_empty_inactive_sections_are_fine(folder: Path) -> None:
    assert read_policy(_write(folder, CONFIDENCE + "gears: []\nstages: []\ncache: null\n"))


# --- model files ------------------------------------------------------------------------------


def test_missing_model_file(folder: Path) -> None:
    (folder / "models" / "large.onnx").unlink()
    path = _write(folder, CONFIDENCE)
    resolved = (folder / "models" / "large.onnx").resolve()
    match = _exactly(
        path, f"4 tiers.large.model: no such file models/large.onnx (resolved: {resolved})"
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(path)
    assert read_policy(path, check_files=False).policy.name == "digits"


def test_a_dataset_policy_tolerates_missing_files_but_checks_present_ones(
    folder: Path, onnx_files: dict[str, Path]
) -> None:
    (folder / "models" / "large.onnx").unlink()
    text = CONFIDENCE.replace("name: digits\n", "name: digits\ndataset: digits\n")
    assert read_policy(_write(folder, text)).policy.dataset == "digits"
    shutil.copy(onnx_files["wine"], folder / "models" / "large.onnx")
    path = _write(folder, text)
    match = _exactly(path, "5 tiers.large.model: input width 13 differs from tier 'tiny' (64)")
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_unknown_dataset(folder: Path) -> None:
    path = _write(folder, CONFIDENCE.replace("name: digits\n", "name: digits\ndataset: mnist\n"))
    match = _exactly(
        path,
        "2 dataset: unknown dataset 'mnist' (allowed: clinc150, covertype, digits, ltr, movielens)",
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


@pytest.mark.parametrize(
    ("model", "problem"),
    [
        ("wine", "input width 13 differs from tier 'tiny' (64)"),
        ("double", "input type double differs from tier 'tiny' (float)"),
        ("two-inputs", "has 2 inputs (allowed: 1, a [rows, features] tensor)"),
    ],
)
def test_onnx_inputs_must_agree(
    folder: Path, onnx_files: dict[str, Path], model: str, problem: str
) -> None:
    shutil.copy(onnx_files[model], folder / "models" / "large.onnx")
    path = _write(folder, CONFIDENCE)
    with pytest.raises(PolicyError, match=_exactly(path, f"4 tiers.large.model: {problem}")):
        read_policy(path)


def test_unreadable_onnx_file(folder: Path, onnx_files: dict[str, Path]) -> None:
    shutil.copy(onnx_files["garbage"], folder / "models" / "large.onnx")
    path = _write(folder, CONFIDENCE)
    pattern = rf"^{re.escape(str(path))}:4 tiers\.large\.model: not a readable ONNX model \("
    with pytest.raises(PolicyError, match=pattern):
        read_policy(path)


def test_scorer_width_must_match_the_tiers(folder: Path, onnx_files: dict[str, Path]) -> None:
    shutil.copy(onnx_files["wine"], folder / "models" / "scorer.onnx")
    path = _write(folder, COMPLEXITY)
    match = _exactly(path, "7 routing.scorer.model: input width 13 differs from tier 'tiny' (64)")
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_scorer_model_must_be_a_file(folder: Path) -> None:
    text = COMPLEXITY.replace("models/scorer.onnx", "'https://host/v2/models/scorer'")
    path = _write(folder, text)
    match = _exactly(
        path, "7 routing.scorer.model: must be a file path relative to the policy, not a URL"
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_remote_tier_needs_a_host(folder: Path) -> None:
    text = CONFIDENCE.replace(
        "{model: models/large.onnx, placement: deployment}", "{model: 'http:///v2/models/large'}"
    )
    path = _write(folder, text)
    match = _exactly(path, "4 tiers.large.model: URL has no host (allowed: http://HOST/...)")
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


def test_other_url_schemes_are_refused(folder: Path) -> None:
    path = _write(folder, CONFIDENCE.replace("models/large.onnx", "'ftp://host/large.onnx'"))
    match = _exactly(
        path,
        "4 tiers.large.model: unsupported URL scheme 'ftp://' (allowed: http://, https://, or a "
        "file path relative to the policy)",
    )
    with pytest.raises(PolicyError, match=match):
        read_policy(path)


LEAVES = "path leaves the policy folder (set allow_outside_paths: true to allow it)"


def test_relative_path_escaping_the_folder(folder: Path, onnx_files: dict[str, Path]) -> None:
    shutil.copy(onnx_files["tiny"], folder.parent / "x.onnx")
    path = _write(folder, CONFIDENCE.replace("models/tiny.onnx", "../x.onnx"))
    with pytest.raises(PolicyError, match=_exactly(path, f"3 tiers.tiny.model: {LEAVES}")):
        read_policy(path)
    allowed = CONFIDENCE.replace("models/tiny.onnx", "../x.onnx") + "allow_outside_paths: true\n"
    loaded = read_policy(_write(folder, allowed))
    assert loaded.model_path("tiny") == (folder.parent / "x.onnx").resolve()


def test_absolute_path_is_refused(folder: Path, onnx_files: dict[str, Path]) -> None:
    absolute = onnx_files["tiny"].resolve()
    path = _write(folder, CONFIDENCE.replace("models/tiny.onnx", str(absolute)))
    with pytest.raises(PolicyError, match=_exactly(path, f"3 tiers.tiny.model: {LEAVES}")):
        read_policy(path)
    inside = (folder / "models" / "tiny.onnx").resolve()  # absolute, even when inside
    path = _write(folder, CONFIDENCE.replace("models/tiny.onnx", str(inside)))
    with pytest.raises(PolicyError, match=_exactly(path, f"3 tiers.tiny.model: {LEAVES}")):
        read_policy(path)


def test_symlink_escaping_the_folder(folder: Path, onnx_files: dict[str, Path]) -> None:
    link = folder / "models" / "tiny.onnx"
    link.unlink()
    link.symlink_to(onnx_files["tiny"].resolve())
    path = _write(folder, CONFIDENCE)
    with pytest.raises(PolicyError, match=_exactly(path, f"3 tiers.tiny.model: {LEAVES}")):
        read_policy(path)
    loaded = read_policy(path, check_files=False)
    with pytest.raises(PolicyError, match=f"^tiers\\.tiny\\.model: {re.escape(LEAVES)}$"):
        loaded.model_path("tiny")


def test_symlink_inside_the_folder_is_fine(folder: Path) -> None:
    (folder / "models" / "alias.onnx").symlink_to("tiny.onnx")
    path = _write(folder, CONFIDENCE.replace("models/tiny.onnx", "models/alias.onnx"))
    assert read_policy(path).model_path("tiny") == (folder / "models" / "tiny.onnx").resolve()


# --- the JSON Schema ----------------------------------------------------------------------


def test_schema_describes_the_policy() -> None:
    schema = policy_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == "urn:cascade:policy" and schema["title"] == "cascade policy"
    assert set(schema["required"]) == {"name", "tiers"}  # and routing or stages
    assert schema["additionalProperties"] is False
    assert schema["properties"]["routing"]["anyOf"][0]["discriminator"]["propertyName"] == "kind"


def test_committed_schema_is_current(tmp_path: Path) -> None:
    fresh = write_schema(tmp_path / "policy.schema.json").read_text(encoding="utf-8")
    committed = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.exists() else ""
    assert committed == fresh, (
        "policies/policy.schema.json is stale: run `cascade policy schema` and commit it"
    )
    assert json.loads(committed) == policy_json_schema()


SHIPPED = sorted(POLICIES.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_policy_loads(path: Path) -> None:
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert first_line == SCHEMA_LINE, f"{path.name} must start with `{SCHEMA_LINE}`"
    assert read_policy(path).policy.tiers


# --- the command line ---------------------------------------------------------------------


def test_cli_validate(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(folder, CONFIDENCE, name="good.yaml")
    other = _write(folder, SPECULATIVE, name="other.yaml")
    assert main(["policy", "validate", str(good), str(other)]) == 0
    captured = capsys.readouterr()
    assert captured.out == (
        f"ok  {good} (2 tiers, routing confidence)\nok  {other} (2 tiers, routing speculative)\n"
    )
    assert captured.err == ""
    bad = _write(folder, CONFIDENCE.replace("threshold: 0.9", "threshold: 1.5"), name="bad.yaml")
    assert main(["policy", "validate", str(bad), str(good)]) == 1
    captured = capsys.readouterr()
    assert captured.out == f"ok  {good} (2 tiers, routing confidence)\n"
    assert captured.err == f"{bad}:9 routing.chain[0].threshold: must be <= 1, got 1.5\n"


def test_cli_schema(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nested" / "policy.schema.json"
    assert main(["policy", "schema", "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}\n"
    assert json.loads(out.read_text(encoding="utf-8")) == policy_json_schema()
    assert out.read_text(encoding="utf-8").endswith("}\n")
