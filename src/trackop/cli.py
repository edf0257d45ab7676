"""The ``trackop`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import os
import random
import sys
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path

from . import __version__
from .settings import (
    DEFAULT_OPERATOR_NAMESPACE,
    FAILURE_POLICIES,
    LOG_FORMATS,
    MANAGED_ADDRESSES,
    MIB,
    ServerLimits,
    Settings,
)

# Subcommands other installed packages add: each entry point is a callable
# ``register(subparsers)`` (the test bed's package adds ``testbed`` and ``dev``).
COMMANDS_GROUP = "trackop.commands"


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
    """The operator's Settings: the flags given, else the TRACKOP_* environment, else defaults."""
    flags = {
        "operator_namespace": args.operator_namespace, "managed_postgres_address": args.managed_postgres_address,
        "metrics_address": args.metrics_address, "peering_lifetime": args.peering_lifetime,
        "log_format": args.log_format, "webhook_address": args.webhook_address, "webhook_url": args.webhook_url,
        "webhook_failure_policy": args.webhook_failure_policy, "webhook_cert_secret": args.webhook_cert_secret,
        "webhook_service": args.webhook_service, "webhook_owner_cluster_role": args.webhook_owner_clusterrole,
    }
    changes = {key: value for key, value in flags.items() if value not in (None, "")}
    if args.verbose:
        changes["verbose"] = True
    if args.allow_operator_cloud_identity:
        changes["allow_operator_cloud_identity"] = True
    if args.namespace and not any(set(ns) & set("*?[]!") for ns in args.namespace):
        changes["watch_namespaces"] = tuple(args.namespace)  # kopf's patterns would need every namespace
    for key in ("allowed_artifact_endpoint", "allowed_image", "allowed_service_account"):
        if getattr(args, key):
            changes[f"{key}s"] = tuple(getattr(args, key))
    settings = Settings.from_environ(environ)
    limits = {"read_timeout": args.webhook_read_timeout, "keepalive_timeout": args.webhook_keepalive_timeout,
              "max_connections": args.webhook_max_connections, "max_body_bytes": args.webhook_max_body_bytes}
    given_limits = {key: value for key, value in limits.items() if value is not None}
    if given_limits:
        changes["webhook_limits"] = dataclasses.replace(settings.webhook.limits, **given_limits)
    return settings.replace(**changes)


def _run(args: argparse.Namespace) -> int:
    if args.kubeconfig:
        # Before kopf and the kubernetes client are imported: both read it at import.
        os.environ["KUBECONFIG"] = str(args.kubeconfig)
    try:
        settings = settings_from(args, os.environ)
    except ValueError as error:
        raise RuntimeError(f"invalid setting: {error}") from None
    import kopf

    from .controller import handlers
    from .controller.runtime import Runtime

    kopf.configure(verbose=settings.verbose, log_format=kopf.LogFormat[settings.log_format.upper()])
    kopf.run(
        registry=handlers.registry(settings),
        memo=kopf.Memo(runtime=Runtime.create(settings)),
        clusterwide=args.all_namespaces,
        namespaces=args.namespace or (),
        standalone=not args.peering,
        # A name makes kopf's peering mandatory (it pauses until the peering CRD exists).
        peering_name=args.peering_name if args.peering else None,
        # kopf pauses every peer of equal priority: each replica draws its own, the highest acts.
        priority=(args.peering_priority or random.SystemRandom().randint(1, 2**31 - 1)) if args.peering else None,
        liveness_endpoint=f"http://{args.health_address}/healthz",
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trackop", description=__doc__)
    parser.add_argument("--version", action="version", version=f"trackop {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="the operator, against the current kubeconfig or in-cluster config")
    scope = run.add_mutually_exclusive_group(required=True)
    scope.add_argument("--namespace", "-n", action="append", help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    run.add_argument("--kubeconfig", type=Path, help="default: $KUBECONFIG, then ~/.kube/config")
    run.add_argument("--health-address", default="127.0.0.1:8080",
                     help="host:port of the liveness endpoint /healthz (default %(default)s)")
    run.add_argument("--metrics-address", metavar="HOST:PORT",
                     help="serve Prometheus metrics on http://HOST:PORT/metrics (default: off)")
    run.add_argument("--peering", action="store_true",
                     help="coordinate with other trackop replicas through kopf peering, so only one acts "
                          "(needs kopf's ClusterKopfPeering CRD, or KopfPeering with --namespace)")
    run.add_argument("--peering-name", default="trackop",
                     help="the kopf peering object the replicas share (default %(default)s)")
    run.add_argument("--peering-priority", type=int, default=0,
                     help="this replica's priority; the highest live one acts (default: drawn at random)")
    run.add_argument("--peering-lifetime", type=float,
                     help="seconds without a keepalive before a peer counts as dead and another takes over "
                          "(kopf's default 60)")
    run.add_argument("--operator-namespace",
                     help="the operator's own namespace: never injected; holds the webhook certificate "
                          f"(default $TRACKOP_NAMESPACE, else {DEFAULT_OPERATOR_NAMESPACE})")
    run.add_argument("--webhook-address", metavar="HOST:PORT",
                     help="serve the admission webhooks here and register them (injection into pods, "
                          "TrackingBackend validation); for the local bed, 127.0.0.1:PORT")
    run.add_argument("--webhook-url", help="the URL the API server calls (default https://HOST:PORT)")
    run.add_argument("--webhook-service", metavar="NAME",
                     help="in a cluster: the API server calls this Service (in the operator's namespace, port 443) "
                          "instead of a URL; the certificate names it")
    run.add_argument("--webhook-owner-clusterrole", metavar="NAME",
                     help="make this ClusterRole (the chart's) the owner of the webhook configurations, so they "
                          "are garbage-collected with it when the release is uninstalled")
    run.add_argument("--webhook-failure-policy", choices=FAILURE_POLICIES,
                     help="Ignore (default): pods are created uninjected, with a warning, when the webhook is down or "
                          "the backend is unknown; Fail: such pods are rejected")
    run.add_argument("--webhook-cert-secret", metavar="NAME",
                     help="serve the certificate of this TLS Secret in the operator's namespace (tls.crt, tls.key, "
                          "ca.crt; for example one cert-manager renews) instead of trackop's own CA; reloaded when "
                          "it changes")
    run.add_argument("--webhook-read-timeout", type=float, metavar="SECONDS",
                     help="the webhook server closes a connection whose TLS handshake, request headers or body "
                          f"take longer than this, each (default $TRACKOP_WEBHOOK_READ_TIMEOUT, else "
                          f"{ServerLimits.read_timeout:g})")
    run.add_argument("--webhook-keepalive-timeout", type=float, metavar="SECONDS",
                     help="close a kept-alive webhook connection idle this long (default "
                          f"$TRACKOP_WEBHOOK_KEEPALIVE_TIMEOUT, else {ServerLimits.keepalive_timeout:g}: longer "
                          "than the API server's 90, so that it closes them)")
    run.add_argument("--webhook-max-connections", type=int, metavar="N",
                     help="open webhook connections at most; more wait to be accepted (default "
                          f"$TRACKOP_WEBHOOK_MAX_CONNECTIONS, else {ServerLimits.max_connections})")
    run.add_argument("--webhook-max-body-bytes", type=int, metavar="BYTES",
                     help="larger admission requests get 413, unread (default $TRACKOP_WEBHOOK_MAX_BODY_BYTES, "
                          f"else {ServerLimits.max_body_bytes // MIB} MiB, what the API server itself reads of a request)")
    run.add_argument("--managed-postgres-address", choices=MANAGED_ADDRESSES,
                     help="how the operator reaches the PostgreSQL servers it deploys (spec.postgres.managed): "
                          "service (default), their Service's cluster DNS name; pod, the ready pod's IP, for an "
                          "operator running outside the cluster's Service network (workloads always get the "
                          "Service name)")
    run.add_argument("--log-format", choices=LOG_FORMATS,
                     help="full (default: time, logger, level, message), plain (the message), or json (one "
                          "object a line, kopf's JSON format, for log collectors)")
    run.add_argument("--verbose", action="store_true")
    policy = run.add_argument_group("what tenants' TrackingBackends may use (docs/security.md)")
    policy.add_argument("--allow-operator-cloud-identity", action="store_true",
                        help="check and create buckets without a credentialsSecretRef with the operator's own "
                             "cloud identity (default $TRACKOP_ALLOW_OPERATOR_CLOUD_IDENTITY, else off: such "
                             "buckets are left to the tracking server's ServiceAccount)")
    policy.add_argument("--allowed-artifact-endpoint", action="append", metavar="HOST_PATTERN",
                        help="a host pattern spec.artifacts.*.endpoint may name, e.g. *.amazonaws.com "
                             "(repeatable; default $TRACKOP_ALLOWED_ARTIFACT_ENDPOINTS, comma-separated; none: any)")
    policy.add_argument("--allowed-image", action="append", metavar="PATTERN",
                        help="an image pattern spec.server.image and spec.schema.image may name, e.g. "
                             "ghcr.io/mlflow/mlflow:* (repeatable; default $TRACKOP_ALLOWED_IMAGES; none: any)")
    policy.add_argument("--allowed-service-account", action="append", metavar="PATTERN",
                        help="a name pattern spec.server.serviceAccountName may name (repeatable; default "
                             "$TRACKOP_ALLOWED_SERVICE_ACCOUNTS; none: any)")
    run.set_defaults(func=_run)

    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        entry.load()(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (RuntimeError, FileNotFoundError, TimeoutError) as exc:
        print(f"trackop: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
