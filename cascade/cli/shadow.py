"""`cascade shadow` and `cascade promote`: try a candidate policy on live traffic beside
the serving one, read the side-by-side report, make the candidate live.

    cascade shadow URL CANDIDATE.yaml [--model NAME] [--sample-rate R]   start (or replace)
    cascade shadow URL --model NAME [--report | --stop] [--json]          report / stop
    cascade promote URL --model NAME [--write PATH]                       make it live
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from cascade._table import table
from cascade.errors import CascadeError

__all__ = ["add_shadow_commands", "print_report", "run_promote", "run_shadow"]


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", metavar="NAME", default=None,
                        help="the served model (default: the candidate's name)")  # fmt: skip
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token-file", metavar="FILE", default=None,
                       help="file holding the server's bearer token")  # fmt: skip
    token.add_argument("--token-env", metavar="VAR", default=None,
                       help="environment variable holding it (default: CASCADE_TOKEN, if "
                       "set)")  # fmt: skip
    parser.add_argument("--ca-bundle", metavar="PEM", default=None,
                        help="CA certificates to trust for an https URL")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the server's JSON as is")


def add_shadow_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    shadow = commands.add_parser(
        "shadow",
        help="run a candidate policy beside the serving one on a sample of live requests",
        description="Send CANDIDATE (a policy file: same name, the serving policy's tiers) to "
        "the server, which runs it on a sample of requests in the background, never in a "
        "reply, and compares it with the serving policy: agreement, relative cost, "
        "escalations, latency. Without CANDIDATE: print the report (--stop: stop it). On "
        "Ray Serve with more than one ingress replica this reaches one replica: use the "
        "policy's shadow: section and `cascade reload` there.",
    )
    _add_client_options(shadow)
    shadow.add_argument("candidate", nargs="?", type=Path, default=None, metavar="CANDIDATE",
                        help="the candidate policy file")  # fmt: skip
    shadow.add_argument("--sample-rate", type=float, default=0.1, metavar="R",
                        help="share of requests shadowed (default 0.1)")  # fmt: skip
    shadow.add_argument("--max-queued", type=int, default=64, metavar="N",
                        help="sampled requests waiting at most; more are dropped (default "
                        "64)")  # fmt: skip
    what = shadow.add_mutually_exclusive_group()
    what.add_argument("--report", action="store_true", help="print the report (the default "
                      "without CANDIDATE)")  # fmt: skip
    what.add_argument("--stop", action="store_true", help="stop the shadow policy")
    shadow.set_defaults(run=run_shadow)

    promote = commands.add_parser(
        "promote",
        help="make the shadow policy the serving one (a hot reload)",
        description="Edge runtime: the server applies the candidate as a reload would (its "
        "version changes); the policy file a restart reads is not changed: --write PATH "
        "writes the candidate's text there (else it is printed). Ray Serve: run on the "
        "cluster's head node; `cascade reload` runs with the candidate's file in place of the "
        "model's, so that every ingress replica takes it (a candidate sent over HTTP is "
        "written to --write PATH first).",
    )
    _add_client_options(promote)
    promote.add_argument("--write", type=Path, default=None, metavar="PATH",
                         help="write the promoted policy's text to PATH")  # fmt: skip
    promote.set_defaults(run=run_promote)


class _Client:
    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        from cascade.serving import TOKEN_ENV, bearer_header, load_token

        headers: dict[str, str] = {}
        env = args.token_env
        if args.token_file is None and env is None and os.environ.get(TOKEN_ENV) is not None:
            env = TOKEN_ENV
        if args.token_file is not None or env is not None:
            headers = bearer_header(load_token(file=args.token_file, env=env))
        verify: Any = args.ca_bundle if args.ca_bundle is not None else True
        self.base = args.url.rstrip("/")
        self.http = httpx.Client(headers=headers, verify=verify, timeout=60.0)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
        import httpx

        try:
            reply = self.http.request(method, self.base + path, json=body)
        except httpx.HTTPError as exc:
            raise CascadeError(f"{self.base}: {type(exc).__name__}: {exc}") from exc
        try:
            document: dict[str, Any] = reply.json()
        except ValueError:
            document = {"error": reply.text[:500]}
        return reply.status_code, document


def _expect(status: int, document: dict[str, Any], what: str) -> dict[str, Any]:
    if status != 200:
        raise CascadeError(f"{what}: HTTP {status}: {document.get('error', document)}")
    return document


def _figure(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_report(report: dict[str, Any]) -> None:
    """The side-by-side report as a table, with what it covers above it."""
    candidate = report["candidate_policy"]
    source = candidate.get("file") or "sent over HTTP"
    print(f"model {report['model']}: serving {report['serving_version']} vs candidate "
          f"{candidate['version']} ({source}), sample rate {report['sample_rate']:g}, "
          f"since {report['since']}")  # fmt: skip
    print(f"{report['rows']} rows compared ({report['requests']} requests); agreement "
          f"{_figure(report['agreement'], 4)}; dropped {report['dropped']} (queue full), "
          f"skipped {report['skipped']} (gear or shedding), failed {report['failed']}")  # fmt: skip
    rows = []
    for side in ("serving", "candidate"):
        figures = report[side]
        top = figures["top_agreement"]
        rows.append([
            side,
            _figure(figures["relative_cost"], 4),
            _figure(figures["escalation_rate"], 4),
            f"{_figure(top['agreement'], 4)} ({top['rows']})",
            _figure(figures["latency_ms"]["p50"]),
            _figure(figures["latency_ms"]["p99"]),
        ])  # fmt: skip
    top = report["top_tier"]
    print(table(["policy", "relative cost", "escalations", f"= {top} (rows)", "p50 ms",
                 "p99 ms"], rows))  # fmt: skip
    print(f"(= {top}: agreement with the top tier over the rows the *other* policy answered "
          "with it; ms: engine time per row)")  # fmt: skip
    if report.get("last_error"):
        print(f"last failure: {report['last_error']}")
    if report.get("note"):
        print(f"note: {report['note']}")


def run_shadow(args: argparse.Namespace) -> int:
    client = _Client(args)
    model = args.model
    if args.candidate is not None:
        if args.report or args.stop:
            raise CascadeError("give CANDIDATE to start a shadow policy, or --report/--stop")
        from cascade.policy import read_policy

        loaded = read_policy(args.candidate, check_files=False)  # the server checks the files
        model = model or loaded.policy.name
        body = {"policy": loaded.text, "sample_rate": args.sample_rate,
                "max_queued": args.max_queued}  # fmt: skip
        status, document = client.call("PUT", f"/v2/models/{model}/shadow", body)
        report = _expect(status, document, f"{args.candidate} refused")
    else:
        if model is None:
            raise CascadeError("--model NAME: which model's shadow policy (or give CANDIDATE)")
        method = "DELETE" if args.stop else "GET"
        status, document = client.call(method, f"/v2/models/{model}/shadow")
        report = _expect(status, document, f"model {model}")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        if args.stop:
            print(f"stopped the shadow policy of {model}; its report:")
        elif args.candidate is not None:
            print(f"shadowing {model} with {args.candidate}")
        print_report(report)
    return 0


def run_promote(args: argparse.Namespace) -> int:
    if args.model is None:
        raise CascadeError("--model NAME: which model's shadow policy to promote")
    client = _Client(args)
    model = args.model
    report = _expect(*client.call("GET", f"/v2/models/{model}/shadow"), f"model {model}")
    status, document = client.call("POST", f"/v2/models/{model}/shadow/promote")
    if status == 200:  # one process serves: applied there
        if args.write is not None:
            args.write.write_text(document["policy"])
        if args.json:
            print(json.dumps(document, indent=2))
            return 0
        print(f"promoted {model}: version {document['previous_version']} -> "
              f"{document['version']}")  # fmt: skip
        if args.write is not None:
            print(f"wrote the promoted policy to {args.write}")
        else:
            print(f"a restart or SIGHUP reads {document['file']} again; to keep the candidate, "
                  "put this text there (or rerun with --write PATH):\n")  # fmt: skip
            print(document["policy"])
        return 0
    if status != 409 or "cascade promote" not in str(document.get("error", "")):
        _expect(status, document, f"promoting {model}")
    return _promote_on_ray(args, model, report)


def _promote_on_ray(args: argparse.Namespace, model: str, report: dict[str, Any]) -> int:
    """Ray Serve: `cascade reload` with the candidate's file in place of the model's, from
    the list the app was started with (its ingress's app_args), so every replica takes it."""
    candidate = report["candidate_policy"]
    file = candidate.get("file")
    if args.write is not None:
        args.write.write_text(candidate["text"])
        file = str(args.write.resolve())
    elif file is None:
        raise CascadeError(
            "the candidate was sent over HTTP and has no file: give --write PATH (in the "
            "serving policy's folder: its relative model paths start there)"
        )
    served = _served_policies()
    from cascade.policy import read_policy

    names = {p: read_policy(p, check_files=False).policy.name for p in served}
    if model not in names.values():
        raise CascadeError(f"the running app serves no model '{model}' (files: {served})")
    policies = [file if names[p] == model else p for p in served]
    from cascade.cli.serve import run_reload

    status = run_reload(argparse.Namespace(policies=[Path(p) for p in policies],
                                           no_progress=True))  # fmt: skip
    if status == 0:
        print(f"promoted {model}: every ingress replica serves {file} now; give that file "
              "to `cascade serve` (or copy it over the old one) so that a restart keeps "
              "it")  # fmt: skip
    return status


def _served_policies() -> list[str]:
    """The policy files the local `cascade serve` app was built from."""
    os.environ["RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP"] = "1"  # see run_reload
    try:
        import ray
        from ray import serve
    except ImportError:
        raise CascadeError(
            'promoting on Ray Serve needs Ray: pip install "cascade[serve]"'
        ) from None
    from cascade.cli.serve import APP_NAME

    try:
        ray.init(address="auto", include_dashboard=False, log_to_driver=False)
    except Exception as exc:  # ConnectionError and Ray's own: no cluster to reach here
        raise CascadeError(
            f"the server promotes through `cascade reload`, which needs the Ray cluster: run "
            f"this on its head node ({type(exc).__name__}: {exc})"
        ) from exc
    try:
        try:
            ingress = serve.get_app_handle(APP_NAME)
        except Exception as exc:  # Serve raises RayServeException: no such application
            raise CascadeError(f"no `cascade serve` app is running here: {exc}") from exc
        policies: list[str] = list(ingress.app_args.remote().result()["policies"])
    finally:
        ray.shutdown()
    return policies
