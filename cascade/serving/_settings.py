"""What a serving process serves and its limits, and the Ray Serve options they imply.

:class:`ServingLimits` are the fields both runtimes share (the edge's settings extend them);
:class:`AppArgs` are the Ray app's (``deployments.app.build_app``, the ``args`` of a Serve
config). The option functions are pure, no Ray import: the Ray host binds its deployments
with them, and ``cascade config`` writes the same ones into a Serve config, where an operator
sees and edits them (a config's ``deployments`` entries override what the code sets).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cascade.policy import Policy, Tier
from cascade.serving._auth import BearerAuth

__all__ = [
    "INGRESS",
    "AppArgs",
    "ServingLimits",
    "deployment_name",
    "ingress_options",
    "tier_options",
]


class ServingLimits(BaseModel):
    """Policies to serve and the limits of one serving process (a Ray replica, an edge box).

    Example::

        ServingLimits(policies=["policies/digits.yaml"], max_rows=1024)
    """

    model_config = ConfigDict(extra="forbid")

    policies: list[str] = Field(min_length=1, description="policy files to serve")
    max_rows: int = Field(4096, ge=1, description="most rows per request")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="largest request body")
    coalesce_ms: float = Field(2.0, ge=0, description="window coalescing concurrent requests")
    front_queue_ms: float = Field(
        0.0,
        ge=0,
        le=60_000,
        description="the most a request may wait on purpose in a bounded queue in front of "
        "this process (HAProxy's with `cascade serve --haproxy-queue-ms`): the test for a "
        "standing delay before our code allows it",
    )
    max_ongoing_requests: int = Field(
        512,
        ge=1,
        description="requests one serving process (replica) holds at once: enough that "
        "overload queues in cascade's own deadline-aware queue, not in front of it",
    )
    max_queued_requests: int = Field(
        256, ge=-1, description="requests waiting beyond those before a 503 (-1: no limit)"
    )
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After of a 503 for backpressure")
    token_file: str | None = Field(
        None,
        min_length=1,
        description="file holding the bearer token every request must send (read once at "
        "start, stripped): a path on the serving machine, e.g. a mounted Secret; never the "
        "token itself",
    )
    token_env: str | None = Field(
        None,
        min_length=1,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="environment variable holding the bearer token (instead of token_file), "
        "in the serving process's environment",
    )
    open_health: bool = Field(
        True,
        description="with a token: /v2/health/live and /v2/health/ready answer without it "
        "(for probes); false: they ask for it too",
    )

    @model_validator(mode="after")
    def _one_token_source(self) -> ServingLimits:
        if self.token_file is not None and self.token_env is not None:
            raise ValueError(
                f"token_file ({self.token_file}) and token_env ({self.token_env}) exclude "
                "each other: the token comes from one place"
            )
        return self

    def auth(self) -> BearerAuth | None:
        """The bearer token check these settings ask for (``None``: anyone may call); reads
        the token now, so a missing one fails here, before serving."""
        return BearerAuth.load(
            token_file=self.token_file, token_env=self.token_env, open_health=self.open_health
        )


INGRESS = "Ingress"


class AppArgs(ServingLimits):
    """Arguments of ``deployments.app.build_app`` (also the ``args`` of a Serve config file)."""

    ingress_replicas: int = Field(1, ge=1, le=1000, description="ingress replicas")
    ingress_num_cpus: float = Field(0.5, ge=0, description="logical CPUs per ingress replica")
    use_gpus: bool = Field(
        False,
        description="let tiers whose providers name CUDAExecutionProvider ask Ray for a GPU "
        "(`cascade config` sets it; a local Ray without GPUs runs them on CPU)",
    )


def deployment_name(policy: str, tier: str) -> str:
    """The Serve deployment of a policy's deployment tier: ``digits-large``."""
    return f"{policy}-{tier}"


def _gpus(tier: Tier, use_gpus: bool) -> float:
    if not use_gpus:
        return 0.0
    if tier.resources.num_gpus is not None:
        return tier.resources.num_gpus
    return 1.0 if "CUDAExecutionProvider" in tier.providers else 0.0


def tier_options(policy: Policy, tier: str, args: AppArgs) -> dict[str, Any]:
    """Serve options of one deployment tier: replicas or autoscaling, limits, resources.

    Example::

        tier_options(read_policy("policies/digits.yaml").policy, "large", AppArgs(policies=[...]))
        # {'name': 'digits-large', 'max_ongoing_requests': 512, ..., 'num_replicas': 1}
    """
    spec = policy.tiers[tier]
    actor: dict[str, Any] = {"num_cpus": spec.resources.num_cpus}
    gpus = _gpus(spec, args.use_gpus)
    if gpus:
        actor["num_gpus"] = gpus
    if spec.resources.memory_mb is not None:
        actor["memory"] = spec.resources.memory_mb * 2**20
    options: dict[str, Any] = {
        "name": deployment_name(policy.name, tier),
        # a replica must take at least one full batch of calls, else batches never fill
        "max_ongoing_requests": spec.max_ongoing_requests
        or max(args.max_ongoing_requests, spec.batching.max_batch_size),
        "max_queued_requests": spec.max_queued_requests,
        "ray_actor_options": actor,
    }
    scaling = spec.autoscaling
    if scaling is None:
        options["num_replicas"] = spec.replicas
    else:
        options["autoscaling_config"] = scaling.model_dump(exclude_none=True)
    return options


def ingress_options(args: AppArgs) -> dict[str, Any]:
    """Serve options of the HTTP ingress (the engine and inline tiers run in it)."""
    return {
        "name": INGRESS,
        "num_replicas": args.ingress_replicas,
        "max_ongoing_requests": args.max_ongoing_requests,
        "max_queued_requests": args.max_queued_requests,
        "ray_actor_options": {"num_cpus": args.ingress_num_cpus},
    }
