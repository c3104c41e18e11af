"""The policy file schema: pydantic models, strict, with a description on every field.

A policy names its tiers, how requests are routed through them, and (filled by later
releases) degradation gears, caches and ranking stages. The JSON Schema that editors use is
generated from these models (`cascade policy schema`).
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cascade.errors import PolicyError

__all__ = [
    "BUNDLED_DATASETS",
    "RANKING_DATASETS",
    "AuditSection",
    "Autoscaling",
    "Band",
    "Batching",
    "CacheSection",
    "Calibration",
    "ChainStep",
    "ComplexityRouting",
    "ConfidenceMeasure",
    "ConfidenceRouting",
    "Gear",
    "LogSection",
    "Policy",
    "ProfileSection",
    "Provenance",
    "ProvenanceReference",
    "Resources",
    "Routing",
    "Scorer",
    "SlaRouting",
    "SpeculativeRouting",
    "Stage",
    "Tier",
]

BUNDLED_DATASETS = ("clinc150", "covertype", "digits")
"""Datasets that ship with cascade: a policy naming one gets its tiers built on first use."""
RANKING_DATASETS = ("ltr", "movielens")
"""Datasets of ranking scorers (stages); MovieLens is read from a path, never bundled."""

ConfidenceMeasure = Literal["max_prob", "margin", "entropy"]
TierName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,62}$",
        description="a tier name defined under `tiers`",
    ),
]


class _Strict(BaseModel):
    # NaN and infinity pass no bound check (every comparison with NaN is false) and a NaN
    # threshold silently never accepts; refuse them everywhere.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Batching(_Strict):
    """How requests to one tier are grouped into batches."""

    max_batch_size: int = Field(
        32,
        ge=1,
        le=4096,
        description="deployment tiers: most calls (each carries the rows one engine batch "
        "escalates) that a replica joins into one model run",
    )
    max_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="longest a row waits for its batch to fill, in ms"
    )


class Autoscaling(_Strict):
    """Ray Serve autoscaling for a deployment tier."""

    min_replicas: int = Field(1, ge=0, le=1000, description="replicas kept when idle")
    max_replicas: int = Field(1, ge=1, le=1000, description="replicas allowed under load")
    target_ongoing_requests: float = Field(
        2.0, gt=0, le=10_000, description="ongoing requests per replica the autoscaler aims for"
    )
    initial_replicas: int | None = Field(
        None, ge=0, le=1000, description="replicas at deploy time (default: min_replicas)"
    )
    upscale_delay_s: float = Field(
        30.0, ge=0, le=3600, description="load must stay above target this long before scaling up"
    )
    downscale_delay_s: float = Field(
        600.0,
        ge=0,
        le=86_400,
        description="load must stay below target this long before scaling down",
    )
    look_back_period_s: float = Field(
        30.0,
        gt=10,
        le=3600,
        description="window over which ongoing requests are averaged; longer than the 10 s "
        "at which Serve collects them",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        initial = self.initial_replicas
        if initial is not None and not self.min_replicas <= initial <= self.max_replicas:
            raise ValueError(
                f"initial_replicas ({initial}) must lie within min_replicas "
                f"({self.min_replicas}) and max_replicas ({self.max_replicas})"
            )
        return self


class Resources(_Strict):
    """What one replica of a deployment tier asks Ray for."""

    num_cpus: float = Field(0.5, ge=0, le=1024, description="logical CPUs per replica")
    num_gpus: float | None = Field(
        None,
        ge=0,
        le=64,
        description="GPUs per replica; default: 1 when providers name CUDAExecutionProvider "
        "(only where the app is told it may use GPUs: `cascade config`, or a local Ray with "
        "GPUs), else 0",
    )
    memory_mb: int | None = Field(
        None, ge=1, le=10_000_000, description="memory Ray reserves per replica, in MiB"
    )


class Breaker(_Strict):
    """A tier's circuit breaker: after consecutive failures, stop calling it for a while."""

    enabled: bool = Field(True, description="false: always call the tier")
    failure_threshold: int = Field(
        5, ge=1, le=10_000, description="consecutive failures or timeouts that open it"
    )
    reset_after_s: float = Field(
        5.0, gt=0, le=3600, description="seconds open before one probe call may try the tier"
    )


class Tier(_Strict):
    """One model of the cascade."""

    model: str = Field(
        min_length=1,
        description="ONNX file, relative to the policy file; or an Open Inference Protocol "
        "endpoint URL (http:// or https://, .../v2/models/NAME)",
    )
    cost: float | None = Field(
        None,
        gt=0,
        description="relative cost of one row (large tier = 1); default: from the model card",
    )
    placement: Literal["inline", "deployment"] = Field(
        "inline",
        description="inline: runs inside the router process (no hop, for µs-cheap models); "
        "deployment: its own Ray Serve deployment, reached by batched calls",
    )
    batching: Batching = Field(
        default_factory=lambda: Batching.model_validate({}),
        description="batching of calls to this tier",
    )
    replicas: int = Field(1, ge=1, le=1000, description="fixed replica count (deployment tiers)")
    autoscaling: Autoscaling | None = Field(
        None, description="autoscaling instead of a fixed replica count (deployment tiers)"
    )
    resources: Resources = Field(
        default_factory=lambda: Resources.model_validate({}),
        description="Ray resources of one replica (deployment tiers)",
    )
    max_ongoing_requests: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="calls one replica runs at once (deployment tiers); default: the larger "
        "of the ingress's max_ongoing_requests and batching.max_batch_size",
    )
    max_queued_requests: int = Field(
        -1,
        ge=-1,
        le=1_000_000,
        description="calls waiting for a replica before the call fails at once, so that the "
        "engine falls back (deployment tiers; -1: no limit)",
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        min_length=1,
        description="onnxruntime execution providers in order of preference; unavailable "
        "ones fall back to CPU with a warning",
    )
    timeout_ms: float = Field(
        1000.0, gt=0, le=600_000, description="longest one call to this tier may take, in ms"
    )
    breaker: Breaker = Field(
        default_factory=lambda: Breaker.model_validate({}),
        description="circuit breaker: a failing tier is skipped (answers fall back, degraded) "
        "until a probe call succeeds",
    )
    latency_ms: float | None = Field(
        None,
        gt=0,
        description="latency estimate of one call, in ms, for SLA routing and simulation; "
        "default: the model card's single-row p50",
    )

    token_env: str | None = Field(
        None,
        pattern=r"^CASCADE_[A-Z0-9_]+$",
        description="remote tiers: environment variable holding the bearer token sent to the "
        "endpoint (Authorization: Bearer); named CASCADE_..., so that a policy file cannot "
        "send another secret of the environment to its URL. Never the token itself",
    )
    token_file: str | None = Field(
        None,
        min_length=1,
        description="remote tiers: file holding the bearer token (instead of token_env), "
        "relative to the policy file, read when the policy is applied; the folder rule of "
        "model paths applies (allow_outside_paths for a mounted Secret elsewhere)",
    )
    ca_bundle: str | None = Field(
        None,
        min_length=1,
        description="remote https:// tiers: PEM file of the certificate authorities the "
        "endpoint's certificate is verified against, instead of the system's; relative to the "
        "policy file, the folder rule of model paths applies",
    )

    @property
    def is_remote(self) -> bool:
        return self.model.startswith(("http://", "https://"))

    @model_validator(mode="after")
    def _remote_placement(self) -> Tier:
        if self.is_remote and self.placement == "deployment":
            raise ValueError(
                f"a remote tier ({self.model}) runs where its URL points; placement: "
                "deployment applies to ONNX files only (leave placement out)"
            )
        given = [k for k in ("token_env", "token_file", "ca_bundle") if getattr(self, k)]
        if given and not self.is_remote:
            raise ValueError(f"{', '.join(given)}: for remote tiers only (model is a URL)")
        if self.token_env is not None and self.token_file is not None:
            raise ValueError(
                f"token_env ({self.token_env}) and token_file ({self.token_file}) exclude each "
                "other: the token comes from one place"
            )
        if self.ca_bundle is not None and not self.model.startswith("https://"):
            raise ValueError(f"ca_bundle verifies TLS: the URL must be https://, got {self.model}")
        return self


class Calibration(_Strict):
    """Maps a tier's raw confidence to a calibrated one (the chance its answer is right)."""

    method: Literal["temperature", "isotonic"] = Field(
        description="temperature: softmax(log p / T); isotonic: a monotone map of confidence"
    )
    temperature: float | None = Field(None, gt=0, le=100, description="T for method temperature")
    x: list[float] | None = Field(
        None, description="isotonic knots: raw confidences, ascending, in [0, 1]"
    )
    y: list[float] | None = Field(
        None, description="isotonic knots: calibrated confidences, non-decreasing, in [0, 1]"
    )

    @model_validator(mode="after")
    def _parameters(self) -> Calibration:
        if self.method == "temperature":
            if self.temperature is None:
                raise ValueError("method temperature needs `temperature`")
            if self.x is not None or self.y is not None:
                raise ValueError("method temperature takes no `x`/`y` knots")
        else:
            if self.temperature is not None:
                raise ValueError("method isotonic takes no `temperature`")
            if self.x is None or self.y is None:
                raise ValueError("method isotonic needs knots `x` and `y`")
            if len(self.x) != len(self.y) or len(self.x) < 2:
                raise ValueError(
                    f"isotonic knots need equal lengths >= 2, got x {len(self.x)}, y {len(self.y)}"
                )
            if any(b < a for a, b in pairwise(self.x)) or any(b < a for a, b in pairwise(self.y)):
                raise ValueError("isotonic knots `x` and `y` must be non-decreasing")
            if not all(0 <= v <= 1 for v in [*self.x, *self.y]):
                raise ValueError("isotonic knots must lie in [0, 1]")
        return self


class LearnedDeferral(_Strict):
    """A learned escalation rule for one chain step: an ONNX classifier of "this tier's answer
    is wrong", read from the tier's whole output (probabilities, max_prob, margin, entropy,
    predicted class), earlier tiers' outputs and optionally the row's inputs; never a label.

    Example (YAML)::

        chain:
          - tier: small
            threshold: 0.5      # `cascade calibrate` fits it, on 1 - the rule's score,
            deferral: {}        # and trains the rule and writes its `model` here
          - tier: large
    """

    model: str | None = Field(
        None,
        description="the rule's ONNX file, relative to the policy's folder; its probability of "
        "class 1 is the score. Written by `cascade calibrate` (trained on half of the "
        "calibration split, the threshold certified on the other half); omit it before the "
        "first calibration (such a policy cannot serve)",
    )
    earlier: list[TierName] = Field(
        default_factory=list,
        description="tiers run before this step in the chain whose outputs the rule also "
        "reads (each tier's max_prob and whether it agrees with this tier)",
    )
    inputs: bool = Field(False, description="the rule also reads the row's input features")


class ChainStep(_Strict):
    """One step of a confidence chain: a tier, and when its answer is accepted."""

    tier: TierName
    threshold: float | None = Field(
        None,
        ge=0,
        le=1,
        description="accept the tier's answer when its (calibrated) confidence is >= this; "
        "omit on the last step, whose answer is always accepted",
    )
    calibration: Calibration | None = Field(
        None, description="calibration applied to this tier's confidence before the threshold"
    )
    deferral: LearnedDeferral | None = Field(
        None,
        description="a learned escalation rule (measure 'learned' for this step): the step's "
        "confidence is 1 - the rule's score instead of the routing's measure; no calibration",
    )

    @model_validator(mode="after")
    def _one_confidence(self) -> ChainStep:
        if self.deferral is not None and self.calibration is not None:
            raise ValueError(
                f"chain step '{self.tier}': a learned deferral rule takes no `calibration` "
                "(its score is already fitted to the calibration split)"
            )
        return self


def _check_chain(chain: list[ChainStep]) -> None:
    names = [step.tier for step in chain]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"a tier may appear once in the chain, repeated: {repeated}")
    if chain[-1].deferral is not None:
        raise ValueError(
            f"the last chain step '{chain[-1].tier}' cannot have a deferral rule: nothing "
            "follows it to escalate to"
        )
    for k, step in enumerate(chain):
        if step.deferral is None:
            continue
        late = [t for t in step.deferral.earlier if t not in names[:k]]
        if late:
            raise ValueError(
                f"chain step '{step.tier}': deferral.earlier names {late}, which do not run "
                f"before it (allowed: {names[:k]})"
            )
    for step in chain[:-1]:
        if step.threshold is None:
            raise ValueError(
                f"chain step '{step.tier}' needs a threshold (only the last may omit it)"
            )


class ConfidenceRouting(_Strict):
    """Try tiers cheapest first; escalate the rows whose confidence is below the threshold."""

    kind: Literal["confidence"]
    measure: ConfidenceMeasure = Field(
        "max_prob",
        description="max_prob: top probability; margin: top minus second; entropy: "
        "1 - H(p)/log(n_classes). All lie in [0, 1]",
    )
    chain: list[ChainStep] = Field(min_length=1, description="tiers in the order they are tried")
    max_escalations: int | None = Field(
        None, ge=0, description="most escalations per request; None: the whole chain"
    )

    @model_validator(mode="after")
    def _chain(self) -> ConfidenceRouting:
        _check_chain(self.chain)
        return self


_BUILTIN_SCORERS = ("onnx", "feature")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


class Scorer(_Strict):
    """Scores how hard a request is, in [0, 1]; higher is harder."""

    name: str = Field(
        description="a built-in scorer (onnx, feature) or 'package.module:Class' for your own"
    )
    model: str | None = Field(
        None,
        description="for onnx: a classifier, relative to the policy file, whose probability of "
        "class 1 is the chance that the cheapest tier is wrong",
    )
    feature: int | None = Field(None, ge=0, description="for feature: the input column scored")
    low: float | None = Field(None, description="for feature: value mapped to score 0")
    high: float | None = Field(None, description="for feature: value mapped to score 1")
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments for an out-of-tree scorer"
    )

    @model_validator(mode="after")
    def _parameters(self) -> Scorer:
        if self.name == "onnx" and self.model is None:
            raise ValueError("scorer onnx needs `model`")
        if self.name == "feature":
            if self.feature is None or self.low is None or self.high is None:
                raise ValueError("scorer feature needs `feature`, `low` and `high`")
            if self.low == self.high:
                raise ValueError(f"scorer feature needs low != high, both are {self.low}")
        if self.name not in _BUILTIN_SCORERS and not _IMPORT_PATH.match(self.name):
            raise ValueError(
                f"unknown scorer '{self.name}' (allowed: {', '.join(_BUILTIN_SCORERS)}, "
                "or 'package.module:Class')"
            )
        return self


class Band(_Strict):
    """Requests whose score is below `below` go to `tier` (the last band takes the rest)."""

    tier: TierName
    below: float | None = Field(
        None, ge=0, le=1, description="upper score bound, exclusive; omit on the last band"
    )


class ComplexityRouting(_Strict):
    """A cheap scorer picks each request's tier up front: no escalation."""

    kind: Literal["complexity"]
    scorer: Scorer = Field(description="what scores a request's difficulty")
    bands: list[Band] = Field(min_length=1, description="score bands, ascending, to tiers")

    @model_validator(mode="after")
    def _bands(self) -> ComplexityRouting:
        bounds = [b.below for b in self.bands]
        if bounds[-1] is not None:
            raise ValueError("the last band takes the remaining scores: omit its `below`")
        if any(b is None for b in bounds[:-1]):
            raise ValueError("every band but the last needs `below`")
        numbers = [b for b in bounds[:-1] if b is not None]
        if any(b <= a for a, b in pairwise(numbers)):
            raise ValueError(f"band bounds must increase, got {numbers}")
        return self


class SlaRouting(_Strict):
    """A confidence chain that never starts an escalation the request's deadline cannot finish."""

    kind: Literal["sla"]
    measure: ConfidenceMeasure = Field("max_prob", description="as for confidence routing")
    chain: list[ChainStep] = Field(min_length=1, description="tiers in the order they are tried")
    default_deadline_ms: float = Field(
        100.0, gt=0, le=600_000, description="deadline of requests that bring none, in ms"
    )
    max_escalations: int | None = Field(None, ge=0, description="most escalations per request")

    @model_validator(mode="after")
    def _chain(self) -> SlaRouting:
        _check_chain(self.chain)
        return self


class SpeculativeRouting(_Strict):
    """Start the cheap and the expensive tier together; a confident cheap answer wins."""

    kind: Literal["speculative"]
    measure: ConfidenceMeasure = Field("max_prob", description="as for confidence routing")
    cheap: TierName = Field(description="the tier whose confident answers win")
    expensive: TierName = Field(description="the tier answering the rest")
    threshold: float = Field(ge=0, le=1, description="confidence the cheap answer needs to win")
    calibration: Calibration | None = Field(None, description="calibration of the cheap tier")

    @model_validator(mode="after")
    def _distinct(self) -> SpeculativeRouting:
        if self.cheap == self.expensive:
            raise ValueError(f"cheap and expensive must differ, both are '{self.cheap}'")
        return self


Routing = Annotated[
    ConfidenceRouting | ComplexityRouting | SlaRouting | SpeculativeRouting,
    Field(discriminator="kind"),
]


class Gear(_Strict):
    """A degradation gear: at this load, cap the tiers and lower the thresholds.

    The load is the number of requests the serving replica holds at once (admitted, not yet
    answered). Gears engage in order as it rises, and disengage one at a time after it has
    stayed below ``(1 - gear_hysteresis)`` of their level for ``gear_hold_s``.
    """

    name: str = Field(min_length=1, description="shown in decision traces")
    queue_depth_at_least: int = Field(
        ge=1, description="engage when the replica holds at least this many requests"
    )
    max_tier: TierName | None = Field(None, description="highest tier allowed in this gear")
    threshold_shift: float = Field(
        0.0,
        ge=0,
        le=1,
        description="subtracted from every confidence threshold in this gear: fewer rows escalate",
    )


class SimilarityCacheSection(_Strict):
    """The similarity cache: the nearest earlier input's answer, when it is near enough."""

    threshold: float = Field(
        0.85,
        gt=0,
        le=1,
        description="cosine at or above which the nearest cached input's answer is reused "
        "(0.85 kept false hits <= 1 % on CLINC150 paraphrases: benchmarks/cache.py)",
    )
    max_entries: int = Field(10_000, ge=1, le=1_000_000, description="entries kept (LRU)")
    audit_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of similarity hits answered by the cascade instead and compared, "
        "to measure the false-hit rate live (metric and metadata)",
    )


class CacheSection(_Strict):
    """Answer caches, per serving replica: exact inputs, and optionally similar ones.

    Keyed by the policy's hash, so a reload never serves an answer of the old policy.
    Degraded answers (fallback, deadline, max_tier) are never stored.
    """

    exact_max_entries: int = Field(0, ge=0, description="exact-input cache size; 0: off")
    exact_max_bytes: int = Field(
        64 * 2**20, ge=1024, description="bytes the exact cache may hold (keys and answers)"
    )
    ttl_s: float = Field(300.0, gt=0, description="how long a cached answer stays valid")
    similarity: SimilarityCacheSection | None = Field(
        None, description="the similarity cache; absent: off"
    )


class ProfileSection(_Strict):
    """Latency profiles of a sampled share of requests, recorded by the server.

    A sampled request's phases (parse, admission, cache, coalescer wait, each tier call,
    encoding: see README "Latency profile") go to the histogram
    ``cascade_phase_latency_ms{model, phase}`` of both runtimes; its response is unchanged.
    A request may always ask for its own profile (``parameters.profile: true``).
    """

    sample_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of requests profiled (0.01: one in a hundred; 0: none). Each costs "
        "a few clock reads and one histogram observation per phase",
    )


class LogSection(_Strict):
    """Request/answer logging: a sampled share of the rows answered, one JSON line each.

    Written off the request path (a bounded queue and a writer thread: when the queue is
    full, records are dropped and counted, never waited for), rotated by size, and fed back
    to ``cascade calibrate POLICY --from-log DIR``. Labels posted to
    ``POST /v2/models/{name}/feedback`` go to the same files. File names and the record
    format: ``cascade.serving._answer_log``.
    """

    path: str = Field(
        min_length=1,
        description="folder the log files go to, relative to the policy file (the folder "
        "rule of model paths applies: allow_outside_paths for one elsewhere); created if "
        "missing. Files: NAME.jsonl (NAME: the policy's), rotated to NAME.1.jsonl, ...; a "
        "second process sharing the folder writes NAME.p1.jsonl, and so on",
    )
    sample_rate: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of requests whose rows are logged (all rows of a request, or "
        "none). Default 1: feedback can only label a request that was logged",
    )
    inputs: Literal["full", "hash", "omit"] = Field(
        "full",
        description="full: the row's values (or text), which --from-log needs; hash: their "
        "sha256 only; omit: no input at all",
    )
    probabilities: bool = Field(
        False,
        description="also log the answering tier's probabilities (one number per class: "
        "150 for clinc150)",
    )
    max_bytes: int = Field(
        64 * 2**20,
        ge=4096,
        le=2**40,
        description="bytes one file may reach before it is rotated",
    )
    keep: int = Field(
        4,
        ge=0,
        le=1000,
        description="rotated files kept besides the current one: at most "
        "max_bytes x (keep + 1) on disk per process",
    )


class ShadowSection(_Strict):
    """A candidate policy run beside this one on a sample of live requests, off the
    request path: its answers are compared, never served (``cascade shadow``, README
    "Shadow policies"). The candidate routes over this policy's tiers (a subset, the same
    model files); its gears, cache, profile and shadow sections are not used.

    Example (YAML)::

        shadow: {policy: digits-candidate.yaml, sample_rate: 0.1}
    """

    policy: str = Field(
        min_length=1,
        description="the candidate policy file, relative to this one (same folder rule as "
        "model paths); same name, tiers among this policy's",
    )
    sample_rate: float = Field(
        0.1,
        gt=0,
        le=1,
        description="share of requests whose rows the candidate also answers (in the "
        "background, only while no gear is engaged and nothing was shed lately)",
    )
    max_queued: int = Field(
        64,
        ge=1,
        le=100_000,
        description="sampled requests waiting for the candidate; more are dropped (counted)",
    )


class OverloadSection(_Strict):
    """What the server does by itself under overload, when the policy has no ``gears``.

    Every request that waits is admitted only while the work ahead of it (measured
    service time times the rows queued) fits its deadline; what cannot fit is refused at
    once with 503 + Retry-After. Before that, with ``auto_degrade``, the cascade caps its
    escalations while the predicted queueing delay exceeds ``degrade_at`` of the requests'
    budget: first the most expensive tier is left out, then the next one, down to the
    cheapest; it recovers one step at a time after ``gear_hold_s`` below ``(1 -
    gear_hysteresis)`` of that level. Hand-written ``gears`` take precedence.
    """

    auto_degrade: bool = Field(
        True, description="cap escalations by themselves when the queue threatens deadlines"
    )
    degrade_at: float = Field(
        0.3,
        gt=0,
        le=1,
        description="queueing delay, as a share of a request's budget, at which the first "
        "automatic cap engages (the next at twice this, and so on)",
    )
    target_delay_ms: float | None = Field(
        None,
        gt=0,
        le=600_000,
        description="the budget that the queueing delay of requests without a deadline is "
        "measured against; none: such requests wait as long as it takes and do not move the "
        "automatic caps",
    )


class AuditSection(_Strict):
    """The live audit: how much of what the cascade answers is checked against its top tier.

    A random ``sample_rate`` of the rows answered below the most expensive tier is sent to
    that tier too, after the reply is built, by a background task of the serving process:
    only with spare capacity (never while a gear is engaged nor within
    ``quiet_after_shed_s`` of a shed request) and at most ``max_rows_per_s``. The answers
    are never changed. The server reports, over sliding windows and since start, agreement
    with the top tier (the top tier's answer stands in for the label) with its lower bound,
    live relative cost, escalation and the drift of the first tier's confidence against
    ``provenance.reference``; alarms fire when the bound falls below the target, the cost
    exceeds the calibrated one by ``cost_alarm_factor`` or the drift passes
    ``drift_threshold``. Classification policies only.
    """

    sample_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="share of rows answered below the top tier also sent to it (0: no audit)",
    )
    max_rows_per_s: float | None = Field(
        None,
        gt=0,
        le=1_000_000,
        description="most rows per second sent to the top tier for the audit; none: 5 % of "
        "the top tier's capacity by its card's latency (one row per call, conservative)",
    )
    queue_rows: int = Field(
        1024, ge=1, le=1_000_000, description="audited rows waiting at most; more are dropped"
    )
    batch_rows: int = Field(
        64, ge=1, le=4096, description="most audited rows sent to the top tier in one call"
    )
    window_rows: int = Field(
        20_000, ge=100, le=10_000_000, description="served rows in the sliding window"
    )
    window_audited: int = Field(
        5_000, ge=10, le=1_000_000, description="audited rows in the sliding window"
    )
    window_s: float = Field(
        3600.0, gt=0, le=7 * 86_400, description="rows older than this leave the windows"
    )
    quiet_after_shed_s: float = Field(
        5.0, ge=0, le=3600, description="no audit for this long after a request was shed"
    )
    min_audited_rows: int = Field(
        2000,
        ge=1,
        le=1_000_000,
        description="audited rows in the window before the accuracy alarm may fire (with "
        "fewer, a low bound says 'not enough data yet', not 'below target')",
    )
    min_rows: int = Field(
        1000,
        ge=1,
        le=10_000_000,
        description="served rows in the window before the cost alarm may fire",
    )
    min_agreement: float | None = Field(
        None,
        gt=0,
        le=1,
        description="alarm when the live lower bound on agreement with the top tier falls "
        "below this; none: the target relative accuracy, less the disagreement the policy "
        "already had on its calibration split (provenance.reference.agreement) when recorded",
    )
    cost_alarm_factor: float = Field(
        1.25,
        gt=1,
        le=100,
        description="alarm when the live relative cost exceeds the calibrated one times this",
    )
    alarm_after_rows: int = Field(
        500,
        ge=0,
        le=10_000_000,
        description="the cost and drift alarms are raised once their condition has held "
        "over this many served rows (a window tested again and again crosses its line by "
        "chance now and then)",
    )
    alarm_after_audited: int | None = Field(
        None,
        ge=0,
        le=10_000_000,
        description="the accuracy alarm is raised once its condition has held while this "
        "many more rows were audited; none: half of window_audited (its bound grows with "
        "audited rows, not served ones)",
    )
    drift_threshold: float = Field(
        0.2, gt=0, le=100, description="alarm when the drift score (PSI) exceeds this"
    )
    drift_window: int = Field(
        1000, ge=50, le=1_000_000, description="rows whose confidence the drift score reads"
    )
    drift_min_rows: int = Field(
        500, ge=10, le=1_000_000, description="rows in the drift window before it is scored"
    )


class Stage(_Strict):
    """A ranking stage: filter, coarse or fine, in that order; only fine is required.

    The filter drops candidates scoring below ``min_score``; coarse keeps its best ``keep``
    (N); fine orders those and returns its best ``keep`` (k). A request may ask for another
    N or k up to ``max_keep``.
    """

    name: Literal["filter", "coarse", "fine"] = Field(description="which stage")
    tier: TierName = Field(description="the tier scoring candidates in this stage")
    keep: int | None = Field(
        None, ge=1, le=100_000, description="candidates kept after this stage: N (coarse), k (fine)"
    )
    max_keep: int | None = Field(
        None, ge=1, le=100_000, description="most a request may ask to keep; default: keep"
    )
    min_score: float | None = Field(
        None, description="filter only: candidates scoring below this are dropped"
    )

    @model_validator(mode="after")
    def _fields_of_kind(self) -> Stage:
        if self.name == "filter":
            if self.min_score is None:
                raise ValueError("the filter stage needs min_score")
            if self.keep is not None or self.max_keep is not None:
                raise ValueError("the filter stage drops by min_score; keep is for coarse and fine")
        else:
            if self.min_score is not None:
                raise ValueError(f"min_score is for the filter stage, not {self.name}")
            if self.keep is None:
                raise ValueError(f"the {self.name} stage needs keep")
            if self.max_keep is not None and self.max_keep < self.keep:
                raise ValueError(
                    f"{self.name}: max_keep ({self.max_keep}) must be >= keep ({self.keep})"
                )
        return self

    @property
    def limit(self) -> int:
        """The most candidates a request may ask this stage to keep."""
        assert self.keep is not None
        return self.max_keep if self.max_keep is not None else self.keep


class ProvenanceReference(_Strict):
    """The first tier's confidence on the calibration split, as the drift score reads it:
    cut at ~10 of its quantiles (``edges``, ascending) with each bin's share."""

    tier: TierName = Field(description="the tier whose confidence this is (the first routed)")
    measure: ConfidenceMeasure = Field(description="the confidence measure, calibration applied")
    edges: list[float] = Field(min_length=1, max_length=100, description="inner bin edges")
    shares: list[float] = Field(min_length=2, max_length=101, description="share of each bin")
    rows: int = Field(ge=1, description="calibration rows counted")
    agreement: float | None = Field(
        None,
        ge=0,
        le=1,
        description="share of the calibration rows the policy answered as its top tier does "
        "(what the live audit measures; a target on accuracy relative to the top tier counts "
        "the rows where only the cheaper tier is right as no loss, agreement does not)",
    )

    @model_validator(mode="after")
    def _bins(self) -> ProvenanceReference:
        if len(self.shares) != len(self.edges) + 1:
            raise ValueError(
                f"reference: {len(self.edges)} edges need {len(self.edges) + 1} shares, "
                f"got {len(self.shares)}"
            )
        if any(b <= a for a, b in pairwise(self.edges)):
            raise ValueError(f"reference: edges must rise strictly, got {self.edges}")
        return self


class Provenance(_Strict):
    """Where the thresholds came from; written by `cascade calibrate`."""

    dataset: str = Field(description="dataset or file the thresholds were fitted on")
    split: str = Field(description="the split used for fitting")
    date: str = Field(description="when, ISO 8601")
    target: dict[str, float] = Field(description="what was asked for")
    achieved: dict[str, float] = Field(description="what the fitted policy reached, per split")
    confidence: float | None = Field(
        None, gt=0, lt=1, description="confidence level of the statistical margin, if one was used"
    )
    cost: str | None = Field(
        None,
        description="what 'relative cost' counted when fitted: the model cards' per-row cost "
        "at batch 256 ('model: ...') or the served cost of requests of a given size on a "
        "runtime ('served: ...')",
    )
    cards: dict[str, str] = Field(
        default_factory=dict, description="sha256 of each tier's model file when fitted"
    )
    reference: ProvenanceReference | None = Field(
        None,
        description="the first tier's confidence distribution on the calibration split: what "
        "the live audit's drift score compares traffic with; absent: no drift score",
    )


class Policy(_Strict):
    """A cascade: its tiers and how requests are routed through them.

    Example (YAML)::

        name: digits
        tiers:
          tiny: {model: models/digits/tiny.onnx}
          large: {model: models/digits/large.onnx, placement: deployment}
        routing:
          kind: confidence
          chain:
            - {tier: tiny, threshold: 0.9}
            - {tier: large}
    """

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
        description="served as /v2/models/{name}",
    )
    description: str = Field("", description="free text for people")
    dataset: str | None = Field(
        None,
        description="bundled dataset the tiers are built from (`cascade models build`); "
        "missing model files are then built on first use",
    )
    allow_outside_paths: bool = Field(
        False,
        description="let model paths leave the policy's folder. Off by default so that a "
        "policy folder is self-contained and a served policy cannot make the server read "
        "files elsewhere on its host",
    )
    tiers: dict[TierName, Tier] = Field(min_length=1, description="the models, by name")
    routing: ConfidenceRouting | ComplexityRouting | SlaRouting | SpeculativeRouting | None = Field(
        None,
        discriminator="kind",
        description="how rows move through the tiers (classification policies)",
    )
    gears: list[Gear] = Field(
        default_factory=list,
        description="degradation gears, by rising queue_depth_at_least; none: always full quality",
    )
    gear_hysteresis: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="a gear disengages only once the load is below (1 - this) of its level",
    )
    gear_hold_s: float = Field(
        2.0, ge=0, le=600, description="...and has stayed there this many seconds"
    )
    overload: OverloadSection = Field(
        default_factory=OverloadSection,
        description="automatic degradation under overload (policies without gears)",
    )
    cache: CacheSection | None = Field(
        None, description="answer caches (classification policies), per serving replica"
    )
    profile: ProfileSection | None = Field(
        None,
        description="latency profiles of a sampled share of requests (classification "
        "policies), as a per-phase histogram metric; absent: only requests that ask",
    )
    audit: AuditSection | None = Field(
        None,
        description="the live audit against the top tier, drift and alarms (classification "
        "policies); absent or sample_rate 0: off",
    )
    log: LogSection | None = Field(
        None,
        description="request/answer logging (classification policies), sampled, rotated, "
        "bounded on disk; absent: off",
    )
    shadow: ShadowSection | None = Field(
        None,
        description="a candidate policy answering a sample of live requests beside this one, "
        "for comparison only (classification policies); absent: none",
    )
    stages: list[Stage] = Field(
        default_factory=list,
        description="ranking stages, filter -> coarse -> fine (ranking policies, instead of "
        "routing)",
    )
    provenance: Provenance | None = Field(
        None, description="written by `cascade calibrate`: how the thresholds were fitted"
    )

    @model_validator(mode="after")
    def _gear_order(self) -> Policy:
        depths = [g.queue_depth_at_least for g in self.gears]
        if any(b <= a for a, b in pairwise(depths)):
            raise ValueError(
                f"gears: queue_depth_at_least must rise strictly from gear to gear, got {depths}"
            )
        names = [g.name for g in self.gears]
        if len(set(names)) != len(names) or "normal" in names:
            raise ValueError(f"gears: names must be unique and not 'normal', got {names}")
        return self

    @model_validator(mode="after")
    def _routing_or_stages(self) -> Policy:
        if (self.routing is None) == (not self.stages):
            raise ValueError(
                "give either routing (a classification cascade) or stages (a ranking "
                "cascade)" + (", not both" if self.stages else "")
            )
        if not self.stages:
            return self
        names = [s.name for s in self.stages]
        order = ["filter", "coarse", "fine"]
        if names != [n for n in order if n in names] or "fine" not in names:
            raise ValueError(
                f"stages: need fine, optionally after filter and coarse, in that order; got {names}"
            )
        keeps = {s.name: s for s in self.stages}
        if "coarse" in keeps:
            coarse, fine = keeps["coarse"], keeps["fine"]
            assert coarse.keep is not None and fine.keep is not None
            if coarse.keep < fine.keep:
                raise ValueError(
                    f"stages: coarse keep N ({coarse.keep}) must be >= fine keep k ({fine.keep})"
                )
        if self.gears:
            raise ValueError("gears apply to routing, not to ranking stages")
        if self.cache is not None:
            raise ValueError("cache applies to classification policies, not to ranking stages")
        if self.profile is not None:
            raise ValueError("profile applies to classification policies, not to ranking stages")
        if self.audit is not None:
            raise ValueError(
                "audit applies to classification policies (routing), not to ranking stages"
            )
        if self.log is not None:
            raise ValueError("log applies to classification policies, not to ranking stages")
        if self.shadow is not None:
            raise ValueError("shadow applies to classification policies, not to ranking stages")
        return self

    @property
    def chain_routing(self) -> Routing:
        """The routing of a classification policy; a clear error for a ranking one."""
        if self.routing is None:
            raise PolicyError(
                f"policy '{self.name}' ranks candidates (stages); this needs a classification "
                "policy (routing)"
            )
        return self.routing

    def stage(self, name: str) -> Stage | None:
        """The stage called ``name`` (filter, coarse, fine), if the policy has it."""
        return next((s for s in self.stages if s.name == name), None)

    @model_validator(mode="after")
    def _tier_references(self) -> Policy:
        routing = self.routing
        referenced: list[tuple[str, str]] = []
        if routing is None:
            pass
        elif isinstance(routing, ConfidenceRouting | SlaRouting):
            referenced = [(f"routing.chain[{i}].tier", s.tier) for i, s in enumerate(routing.chain)]
        elif isinstance(routing, ComplexityRouting):
            referenced = [(f"routing.bands[{i}].tier", b.tier) for i, b in enumerate(routing.bands)]
        else:
            referenced = [
                ("routing.cheap", routing.cheap),
                ("routing.expensive", routing.expensive),
            ]
        referenced += [
            (f"gears[{i}].max_tier", g.max_tier)
            for i, g in enumerate(self.gears)
            if g.max_tier is not None
        ]
        referenced += [(f"stages[{i}].tier", s.tier) for i, s in enumerate(self.stages)]
        known = ", ".join(self.tiers)
        for where, name in referenced:
            if name not in self.tiers:
                raise ValueError(f"{where}: unknown tier '{name}' (tiers: {known})")
        return self
