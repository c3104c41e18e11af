"""The HTTP routes of shadow policies, over :class:`~cascade.serving.InferenceService`.

    PUT    /v2/models/{name}/shadow           start (or replace) one: the candidate's text
    GET    /v2/models/{name}/shadow           the side-by-side report
    DELETE /v2/models/{name}/shadow           stop it (the report up to then)
    POST   /v2/models/{name}/shadow/promote   make the candidate the serving policy

Every one changes or reads how a model is served: the service's token guards them as it
guards every route (``InferenceService.authorize`` runs before any route).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import ValidationError

from cascade.errors import CascadeError
from cascade.policy import PolicyFile
from cascade.serving._openapi import ShadowRequest
from cascade.serving._served import RemoteFactory, ServedModel, ServedRanker
from cascade.serving._shadow import Shadow, parse_candidate

__all__ = ["Answer", "ShadowRoutes"]

Answer = tuple[int, dict[str, Any] | str]
"""A route's status and JSON document (a string: the error message of an ``{"error"}``)."""


class _Service(Protocol):
    """What the routes use of :class:`~cascade.serving.InferenceService`."""

    models: dict[str, ServedModel | ServedRanker]
    files: dict[str, tuple[str, PolicyFile]]
    reload_errors: dict[str, str]
    metrics: Any
    promote: Literal["apply", "reload"]

    @property
    def remote(self) -> Callable[[str], Mapping[str, RemoteFactory]]: ...

    def apply_policies(
        self,
        policies: Sequence[Any],
        *,
        remote: Callable[[str], Mapping[str, RemoteFactory]],
    ) -> None: ...


_LOG = logging.getLogger("cascade.serving")

_ONE_REPLICA = (
    "Ray Serve: this call reached one ingress replica; with more than one, put a shadow: "
    "section in the policy file and run `cascade reload` (every replica takes it)"
)


class ShadowRoutes:
    """The shadow routes' handlers, for ``service``'s route table (:meth:`routes`)."""

    def __init__(self, service: _Service) -> None:
        self.service = service

    def routes(self) -> list[tuple[str, str, Callable[..., Awaitable[Answer]]]]:
        """``(method, path suffix after /v2/models/{name}, handler)``."""
        return [
            ("PUT", "/shadow", self.start),
            ("GET", "/shadow", self.report),
            ("DELETE", "/shadow", self.stop),
            ("POST", "/shadow/promote", self.promote),
        ]

    def _served(self, name: str) -> ServedModel | Answer:
        served = self.service.models.get(name)
        if served is None:
            return 404, f"unknown model '{name}' (models: {', '.join(sorted(self.service.models))})"
        if not isinstance(served, ServedModel):
            return 400, (
                f"model '{name}' ranks candidates (stages): shadow policies are for "
                "classification policies"
            )
        return served

    def _shadow(self, name: str) -> Shadow | Answer:
        served = self.service.models.get(name)
        if served is None:
            known = ", ".join(sorted(self.service.models))
            return 404, f"unknown model '{name}' (models: {known})"
        if not isinstance(served.shadow, Shadow):  # a ranking policy never has one
            return 404, (
                f"model '{name}' has no shadow policy (PUT /v2/models/{name}/shadow with a "
                "candidate, or a shadow: section in its policy file, starts one)"
            )
        return served.shadow

    def _report(self, shadow: Shadow, **extra: Any) -> dict[str, Any]:
        report = shadow.report() | extra
        if self.service.promote == "reload":
            report["note"] = _ONE_REPLICA
        return report

    async def start(self, name: str, *, body: Callable[[], Awaitable[bytes]], **_: Any) -> Answer:
        served = self._served(name)
        if not isinstance(served, ServedModel):
            return served
        raw = await body()
        try:
            asked = ShadowRequest.model_validate_json(raw, strict=True)
        except ValidationError as exc:
            problems: str = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
            )
            return 400, (
                "a shadow request is JSON {policy: <candidate YAML>, sample_rate, max_queued}: "
                + problems
            )
        serving = self.service.files[name][1]
        try:
            candidate = parse_candidate(asked.policy, serving, source=f"candidate for {name}")
            shadow = Shadow(name, candidate, served, sample_rate=asked.sample_rate,
                            max_queued=asked.max_queued, origin="http",
                            metrics=self.service.metrics)  # fmt: skip
        except CascadeError as exc:
            return 400, str(exc)
        if served.shadow is not None:
            served.shadow.stop()
        served.shadow = shadow
        _LOG.info("shadow started model=%s candidate=%s origin=http sample_rate=%g", name,
                  shadow.version, shadow.sample_rate)  # fmt: skip
        return 200, self._report(shadow)

    async def report(self, name: str, **_: Any) -> Answer:
        shadow = self._shadow(name)
        if not isinstance(shadow, Shadow):
            return shadow
        return 200, self._report(shadow)

    async def stop(self, name: str, **_: Any) -> Answer:
        shadow = self._shadow(name)
        if not isinstance(shadow, Shadow):
            return shadow
        shadow.stop()
        shadow.served.shadow = None
        _LOG.info("shadow stopped model=%s candidate=%s", name, shadow.version)
        return 200, self._report(shadow)

    async def promote(self, name: str, **_: Any) -> Answer:
        """Apply the candidate as a reload would (same path: version, caches, gears follow
        the existing rules); the reply carries its text, for the file a restart reads."""
        shadow = self._shadow(name)
        if not isinstance(shadow, Shadow):
            return shadow
        if self.service.promote == "reload":
            return 409, (
                "on Ray Serve every ingress replica must take the candidate: run `cascade "
                f"promote URL --model {name}` on the cluster's head node (it runs `cascade "
                "reload` with the candidate's file in place of the model's)"
            )
        key, _serving = self.service.files[name]
        candidate = shadow.candidate
        if candidate.path is None:  # sent over HTTP: it takes the serving policy's place
            candidate = dataclasses.replace(candidate, path=Path(key))
        source = str(candidate.path)
        previous = shadow.served.version
        shadow.stop()
        shadow.served.shadow = None
        # the apply path of a reload, with the policy already read (not parsed again)
        self.service.apply_policies([candidate], remote=self.service.remote)
        error = self.service.reload_errors.get(source)
        if error is not None:
            shadow.served.shadow = shadow  # the serving policy stays, and so does its shadow
            return 409, f"the candidate was refused: {error}"
        served = self.service.models[name]
        _LOG.warning("shadow promoted model=%s from=%s to=%s file=%s", name, previous,
                     served.version, source)  # fmt: skip
        return 200, (
            {
                "model": name,
                "previous_version": previous,
                "version": served.version,
                "file": key,
                "policy": candidate.text,
                "restart": f"a restart or a reload reads {key} again: copy the policy text "
                "there (cascade promote --write does) to keep the candidate",
            }
        )
