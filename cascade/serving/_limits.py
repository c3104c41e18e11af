"""What both runtimes serve and their limits: the fields the Ray app and the edge share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ServingLimits"]


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
    max_ongoing_requests: int = Field(
        64, ge=1, description="requests one serving process (replica) runs at once"
    )
    max_queued_requests: int = Field(
        256, ge=-1, description="requests waiting beyond those before a 503 (-1: no limit)"
    )
    retry_after_s: float = Field(1.0, ge=0, description="Retry-After of a 503 for backpressure")
