"""Who may call: an optional bearer token (RFC 6750) checked once, for every runtime.

:class:`BearerAuth` holds the token and the routes left open; the service asks it about
every request before it routes one (:meth:`InferenceService.handle
<cascade.serving.InferenceService.handle>`), so the Ray ingress, the edge app and any other
adapter that passes headers in by lower-case name (gRPC metadata) check it the same way.

Decisions, and why:

- The token comes from a file (``token_file``: a mounted Kubernetes Secret, a file only the
  service user reads) or an environment variable (``token_env``, ``CASCADE_TOKEN`` by
  default on the command line), read once at start and stripped; never from a command-line
  argument (``ps`` shows those) nor a policy or Serve config file (they are shared).
- It must be an RFC 6750 ``b64token`` (letters, digits, ``-._~+/``, then ``=`` padding):
  whatever a client can send in the header as is. ``secrets.token_urlsafe(32)`` makes one.
- Compared with :func:`hmac.compare_digest` on bytes: the time taken does not tell how much
  of a guess was right.
- A refusal is a 401 whose body says what was missing or wrong, never what was sent, with
  ``WWW-Authenticate: Bearer realm="cascade"`` (plus ``error="invalid_token"`` when a
  token was sent but is not the one). Neither the token nor the header is ever logged; the
  object's ``repr`` hides it.
- Open routes: ``/v2/health/live`` and ``/v2/health/ready`` by default, so Kubernetes
  probes need no secret (they tell only that the server is up and serves a model);
  ``open_health=False`` closes them too. Everything else, ``/openapi.json``, the edge's
  ``/metrics`` and paths that do not exist (a 404 would tell which do) included, answers
  401 without the token.

Example::

    auth = BearerAuth.load(token_env="CASCADE_TOKEN")
    auth.refusal("/v2/models/digits/infer", {"authorization": "Bearer s3cret"})  # None: ok
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cascade.errors import CascadeError

__all__ = [
    "OPEN_HEALTH",
    "REALM",
    "TOKEN_ENV",
    "BearerAuth",
    "Refusal",
    "bearer_header",
    "load_token",
]

TOKEN_ENV = "CASCADE_TOKEN"
"""The environment variable the command line reads a token from when no option names one."""

OPEN_HEALTH = frozenset({"/v2/health/live", "/v2/health/ready"})
"""Routes answered without a token by default: the probes of Kubernetes and load balancers."""

REALM = "cascade"

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


def load_token(*, file: str | os.PathLike[str] | None = None, env: str | None = None) -> str:
    """The token from ``file`` (read once, stripped) or the environment variable ``env``.

    Exactly one source; a missing, unreadable, empty or malformed token is a
    ``CascadeError`` that names the source, never the content.

    Example::

        load_token(file="/var/run/secrets/cascade/token")
        load_token(env="CASCADE_TOKEN")
    """
    if (file is None) == (env is None):
        raise CascadeError("a token comes from exactly one of a file or an environment variable")
    if file is not None:
        where = f"token file {file}"
        try:
            token = Path(file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise CascadeError(f"{where}: cannot read it ({reason})") from None
    else:
        assert env is not None
        where = f"environment variable {env}"
        if env not in os.environ:
            raise CascadeError(f"{where} is not set: it must hold the token")
        token = os.environ[env].strip()
    if not token:
        raise CascadeError(f"{where} is empty: it must hold the token")
    if not _B64TOKEN.fullmatch(token):
        raise CascadeError(
            f"{where}: the token must be letters, digits and -._~+/ (then = padding), as "
            "RFC 6750 allows in a header; e.g. python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'"
        )
    return token


def bearer_header(token: str) -> dict[str, str]:
    """The header a client sends: ``{"authorization": "Bearer <token>"}``."""
    return {"authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: the 401's message and its ``WWW-Authenticate`` value."""

    message: str
    challenge: str


_MISSING = Refusal(
    "authentication required: send the header Authorization: Bearer <token>",
    f'Bearer realm="{REALM}"',
)
_NOT_BEARER = Refusal(
    "the Authorization header must use the Bearer scheme: Authorization: Bearer <token>",
    f'Bearer realm="{REALM}", error="invalid_request"',
)
_WRONG = Refusal(
    "the bearer token is not valid",
    f'Bearer realm="{REALM}", error="invalid_token"',
)


@dataclass(frozen=True)
class BearerAuth:
    """A token every request but those to ``open_paths`` must bear.

    Example::

        auth = BearerAuth("s3cret")
        auth.refusal("/v2", {})                                # Refusal(message=..., ...)
        auth.refusal("/v2", {"authorization": "bearer s3cret"})  # None
        auth.refusal("/v2/health/ready", {})                   # None: open for probes
    """

    token: str = field(repr=False)
    open_paths: frozenset[str] = OPEN_HEALTH

    def __post_init__(self) -> None:
        if not _B64TOKEN.fullmatch(self.token):
            raise CascadeError("the token must be an RFC 6750 b64token (see load_token)")

    @classmethod
    def load(
        cls,
        *,
        token_file: str | os.PathLike[str] | None = None,
        token_env: str | None = None,
        open_health: bool = True,
    ) -> BearerAuth | None:
        """The auth of a server given where its token is (``None``: no token, anyone may
        call); ``open_health=False`` asks for the token on the health routes too."""
        if token_file is None and token_env is None:
            return None
        if token_file is not None and token_env is not None:
            raise CascadeError("give a token file or a token environment variable, not both")
        token = load_token(file=token_file, env=token_env)
        return cls(token, OPEN_HEALTH if open_health else frozenset())

    def is_open(self, path: str) -> bool:
        """Whether ``path`` (no trailing slash) is answered without a token."""
        return path in self.open_paths

    def refusal(self, path: str, headers: Mapping[str, str]) -> Refusal | None:
        """``None`` when the request may go on; else why not. ``headers`` by lower-case name."""
        if self.is_open(path):
            return None
        sent = headers.get("authorization")
        if sent is None or not sent.strip():
            return _MISSING
        scheme, _, credentials = sent.strip().partition(" ")
        if scheme.lower() != "bearer":
            return _NOT_BEARER
        # bytes: compare_digest takes str only when ASCII, and a guess may not be
        guess = credentials.strip().encode("utf-8", "replace")
        if not hmac.compare_digest(guess, self.token.encode("ascii")):
            return _WRONG
        return None
