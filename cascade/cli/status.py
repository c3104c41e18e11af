"""`cascade status`: what a running server's cascades deliver on live traffic, per model."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

__all__ = ["add_status_command", "format_status", "run_status"]


def add_status_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status",
        help="a running server's live audit per model: accuracy bound vs target, cost, drift",
        description="Read URL/v2/models and each model's /config and print, per model, what "
        "its live audit reports (the policy's `audit:` section) beside what the policy was "
        "calibrated for: relative accuracy (agreement with the top tier, estimate and lower "
        "bound) vs the target, relative cost vs the calibrated one, escalation, drift of the "
        "first tier's confidence, the audited rows per tier; then cache, gear, breakers and "
        "alarms. Exit status 3 when an alarm is raised.",
    )
    status.add_argument("url", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8000")
    status.add_argument(
        "--model",
        action="append",
        metavar="NAME",
        help="only this model (repeatable; default: every model served)",
    )
    status.add_argument("--token-file", metavar="PATH", help="file holding the bearer token")
    status.add_argument(
        "--token-env",
        metavar="NAME",
        help="environment variable holding it (default: CASCADE_TOKEN, if set)",
    )
    status.add_argument("--json", action="store_true", help="print each model's /config audit")
    status.add_argument("--timeout", type=float, default=10.0, metavar="S",
                        help="seconds per HTTP call (default 10)")  # fmt: skip
    status.set_defaults(run=run_status)


def _headers(args: argparse.Namespace) -> dict[str, str]:
    from cascade.serving import TOKEN_ENV, bearer_header, load_token

    if args.token_file is not None:
        return bearer_header(load_token(file=args.token_file))
    if args.token_env is not None:
        return bearer_header(load_token(env=args.token_env))
    if os.environ.get(TOKEN_ENV):
        return bearer_header(load_token(env=TOKEN_ENV))
    return {}


def run_status(args: argparse.Namespace) -> int:
    import httpx

    from cascade.errors import CascadeError

    base = args.url.rstrip("/")
    configs: dict[str, dict[str, Any]] = {}
    try:
        with httpx.Client(headers=_headers(args), timeout=args.timeout) as client:
            listed = client.get(f"{base}/v2/models")
            _check(listed, f"{base}/v2/models")
            names = [m["name"] for m in listed.json()["models"]]
            for name in args.model or names:
                if name not in names:
                    raise CascadeError(
                        f"{base}: no model '{name}' (models: {', '.join(names) or 'none'})"
                    )
                reply = client.get(f"{base}/v2/models/{name}/config")
                _check(reply, f"{base}/v2/models/{name}/config")
                configs[name] = reply.json()
    except httpx.HTTPError as exc:
        raise CascadeError(f"{base}: {type(exc).__name__}: {exc}") from None
    if args.json:
        print(json.dumps({name: c.get("audit") for name, c in configs.items()}, indent=2))
    else:
        print("\n\n".join(format_status(name, config) for name, config in configs.items()))
    raised = any((c.get("audit") or {}).get("alarms") for c in configs.values())
    return 3 if raised else 0


def _check(reply: Any, url: str) -> None:
    from cascade.errors import CascadeError

    if reply.status_code != 200:
        try:
            why = reply.json().get("error", reply.text)
        except ValueError:
            why = reply.text
        raise CascadeError(f"GET {url}: {reply.status_code} {why}")


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_status(name: str, config: dict[str, Any]) -> str:
    """The table ``cascade status`` prints for one model, from its ``/config`` document.

    Example::

        print(format_status("digits", httpx.get(f"{url}/v2/models/digits/config").json()))
    """
    from cascade._table import table

    load = config.get("load") or {}
    version = (config.get("versions") or ["?"])[0]
    lines = [f"model {name} (version {version})"]
    audit = config.get("audit")
    if audit is None:
        lines.append("live audit: off (the policy has no `audit:` section with sample_rate > 0)")
    else:
        window, total, drift = audit["window"], audit["total"], audit["drift"]
        accuracy = window["relative_accuracy"]
        target = audit.get("target_relative_accuracy")
        floor = audit.get("agreement_floor")
        calibrated = audit.get("calibrated_relative_cost")
        rows = [
            ["relative accuracy, estimate", _num(accuracy["estimate"]),
             _num(total["relative_accuracy"]["estimate"]), ""],
            [f"relative accuracy, lower bound ({audit['confidence']:g})", _num(accuracy["lower"]),
             _num(total["relative_accuracy"]["lower"]),
             "-" if floor is None else f"floor {floor:.4f} (target {target:g})"],
            ["relative cost", _num(window["relative_cost"]), _num(total["relative_cost"]),
             "-" if calibrated is None else f"calibrated {calibrated:g}"],
            ["escalation", _num(window["escalation"]), _num(total["escalation"]), ""],
            ["rows", str(window["rows"]), str(total["rows"]), ""],
            [f"audited rows (top tier {audit['top_tier']})", str(window["audited"]),
             str(total["audited"]), f"sample {audit['sample_rate']:g}"],
            ["drift (PSI)" + (f", {drift['tier']} {drift['measure']}" if "tier" in drift else ""),
             _num(drift["score"], 3), "",
             f"threshold {drift['threshold']:g}" if "threshold" in drift else "no reference"],
        ]  # fmt: skip
        lines.append(table(["figure", "window", "since start", "policy"], rows))
        tiers = [
            [tier, _num(entry.get("share"), 3), str(entry.get("audited", "-")),
             _num(entry.get("agreement")) if tier != audit["top_tier"] else "1 (top)"]
            for tier, entry in window["tiers"].items()
        ]  # fmt: skip
        if tiers:
            lines.append(table(["tier", "share", "audited", "agreement"], tiers))
        outcomes = audit.get("outcomes") or {}
        if outcomes:
            counted = ", ".join(f"{k}={v}" for k, v in sorted(outcomes.items()))
            lines.append(f"audit rows: {counted}")
    lines.append(f"gear: {load.get('gear', '-')}    in flight: {load.get('in_flight', '-')}")
    breakers = load.get("breakers") or {}
    if breakers:
        lines.append("breakers: " + ", ".join(f"{t}={s}" for t, s in breakers.items()))
    cache = load.get("cache")
    if cache:
        lines.append("cache: " + json.dumps(cache, sort_keys=True))
    alarms = (audit or {}).get("alarms") or {}
    if alarms:
        lines += [f"ALARM {kind}: {message}" for kind, message in alarms.items()]
    elif audit is not None:
        lines.append("alarms: none")
    return "\n".join(lines)
