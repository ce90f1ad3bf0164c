"""``streamjob-operator`` (or ``python -m streamjob_operator``): the operator process.

Every replica campaigns for the Lease (``--lease-name`` in ``--lease-namespace``);
the one holding it runs kopf with the handlers (``handlers``), the others wait their
turn. A leader that loses the Lease stops kopf and campaigns again. Each replica
serves ``/metrics`` (Prometheus) and ``/healthz`` on ``--metrics-port``, leader or
not. SIGTERM and SIGINT stop the process: no pass starts any more (those under way
are cut off), a leader hands the Lease back at once (holder cleared, so a standby
takes over at its next retry, not after the lease duration), then kopf gets a few
seconds to stop.

Kubernetes credentials are the pod's service account in a cluster, else the kubeconfig
(``$KUBECONFIG`` or ``~/.kube/config``). JobManagers are reached at their Service's
cluster DNS name, over HTTPS with each job's token and CA (``acting.credentials``). An
operator outside the cluster can reach them through ``kubectl proxy`` with
``--jobmanager-url-template
http://127.0.0.1:8001/api/v1/namespaces/{namespace}/services/https:{service}:{port}/proxy``,
but that is for experiments: the API server's proxy authenticates the operator itself
and does not pass the operator's bearer token on to the JobManager, which then
answers 401.

Permissions the operator's ServiceAccount needs (for a Helm chart's RBAC):

- ``streamjobs.streamjob.dev``: get, list, watch, patch; ``streamjobs/status``: get,
  patch (the reconcile loop) — kopf also lists and watches
  ``customresourcedefinitions`` cluster-wide to find the resource, and ``namespaces``
  when it watches every namespace;
- in the watched namespaces, the children it applies and deletes:
  ``deployments`` (apps), ``services``, ``configmaps``, ``serviceaccounts``, ``roles``
  and ``rolebindings`` (rbac.authorization.k8s.io), ``networkpolicies``
  (networking.k8s.io): get, create, update, delete; ``deployments``: list, watch too
  (kopf watches them, so steps go on at their changes); the job's CA, certificate and
  REST token ``secrets``: get, create, update (never list or watch; they go with the
  StreamJob by owner reference, so never delete either);
  ``events``: create; the JobManagers' leader ``leases`` (coordination.k8s.io): delete,
  with their HA metadata;
  ``streamjobs/finalizers``: update, where admission enforces owner references
  (the children's ``blockOwnerDeletion``);
- the permissions it grants the JobManagers' and TaskManagers' Roles
  (``desired.rbac``: leases get/create/update, configmaps get/create/update, pods
  list/patch), because Kubernetes lets nobody grant what they do not hold (or give it
  ``escalate`` and ``bind`` on roles);
- its own Lease (``coordination.k8s.io`` ``leases`` in ``--lease-namespace``): get,
  create, update.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import signal
import socket
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from aiohttp import web
from kubernetes_asyncio import client, config

from streamjob_operator import handlers
from streamjob_operator.acting import actor, savepoints
from streamjob_operator.api import durations
from streamjob_operator.desired import network
from streamjob_operator.leadership import lease
from streamjob_operator.observing import jobmanager as rest_observing
from streamjob_operator.observing import kubeapi
from streamjob_operator.planning import configuration

log = logging.getLogger("streamjob_operator")


def _duration(text: str) -> datetime.timedelta:
    try:
        return datetime.timedelta(milliseconds=durations.to_ms(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _s3_root(text: str) -> str:
    parsed = savepoints.object_key(text)
    if parsed is None or not text.startswith("s3://"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an s3://bucket[/prefix] URL (without empty, . or .. segments)"
        )
    bucket, prefix = parsed
    return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"


def _url_template(text: str) -> rest_observing.Resolve:
    try:
        return rest_observing.url_template(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="streamjob-operator",  # the console script the image and the chart run
        description="Reconciles StreamJob resources; one replica leads through a Lease.",
    )
    p.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="a namespace to watch (repeatable; default: every namespace)",
    )
    p.add_argument("--lease-name", default="streamjob-operator", help="the leader election Lease")
    p.add_argument(
        "--lease-namespace",
        default=None,
        help="where the Lease is (default: $POD_NAMESPACE, else the first --namespace, else"
        " default)",
    )
    p.add_argument(
        "--identity",
        default=None,
        help="this replica's name in the Lease (default: $POD_NAME or the host name, plus a"
        " random suffix)",
    )
    p.add_argument("--lease-duration", type=float, default=15.0, help="seconds (default 15)")
    p.add_argument("--renew-deadline", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--retry-period", type=float, default=2.0, help="seconds (default 2)")
    p.add_argument("--metrics-host", default="0.0.0.0", help="address of /metrics and /healthz")
    p.add_argument(
        "--metrics-port", type=int, default=8080, help="port of /metrics and /healthz (0: none)"
    )
    p.add_argument(
        "--savepoint-volume",
        action="append",
        type=Path,
        default=[],
        help="a directory this pod mounts at the path the jobs see, under which expired"
        " savepoints are deleted (repeatable; others are reported, not deleted)",
    )
    p.add_argument(
        "--savepoint-bucket",
        action="append",
        type=_s3_root,
        default=[],
        help="an s3://bucket[/prefix] under which expired savepoints are deleted, with"
        " credentials from this pod's environment (AWS_*, IRSA; repeatable)",
    )
    p.add_argument(
        "--savepoint-on-deletion",
        action="store_true",
        help="stop a deleted StreamJob's job with a final savepoint (when it has"
        " savepoints.directory)",
    )
    p.add_argument(
        "--deletion-savepoint-timeout",
        type=_duration,
        default=datetime.timedelta(minutes=5),
        help="give the final savepoint this long after the deletion (default 5m)",
    )
    p.add_argument(
        "--reconcile-interval",
        type=_duration,
        default=datetime.timedelta(seconds=60),
        help="look at a StreamJob this often when nothing is under way (default 60s)",
    )
    p.add_argument(
        "--checkpoint-status-interval",
        type=_duration,
        default=datetime.timedelta(seconds=15),
        help="while a job runs, refresh its status (last checkpoint) after each checkpoint"
        " interval but not more often than this (default 15s)",
    )
    p.add_argument(
        "--progress-check-interval",
        type=_duration,
        default=datetime.timedelta(seconds=5),
        help="look again this soon while something is under way (default 5s)",
    )
    p.add_argument(
        "--max-concurrent-passes",
        type=int,
        default=handlers.Options.max_concurrent_passes,
        help="reconcile passes under way at once, over all StreamJobs (default"
        f" {handlers.Options.max_concurrent_passes})",
    )
    p.add_argument(
        "--jobmanager-url-template",
        type=_url_template,
        default=rest_observing.identity,
        metavar="URL",
        help="reach each JobManager's REST API at this URL, made of {service}, {namespace}"
        " and {port} of its Service (default: the Service's cluster DNS name,"
        " http://{service}.{namespace}.svc:{port}). For an operator outside the cluster,"
        " through `kubectl proxy`: " + rest_observing.KUBECTL_PROXY_TEMPLATE,
    )
    p.add_argument(
        "--allow-privileged-pods",
        action="store_true",
        help="let StreamJob pod templates have privileged containers, host namespaces and"
        " ports, hostPath volumes, added capabilities and root (default: such a spec is"
        " invalid)",
    )
    p.add_argument(
        "--network-policy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give each StreamJob's pods NetworkPolicies (default: on)",
    )
    p.add_argument(
        "--operator-namespace",
        default=None,
        help="the operator's namespace, whose pods may reach JobManagers' REST APIs"
        " (default: $POD_NAMESPACE)",
    )
    p.add_argument(
        "--rest-namespace",
        action="append",
        default=[],
        help="another namespace whose pods may reach JobManagers' REST APIs (repeatable)",
    )
    p.add_argument(
        "--metrics-namespace",
        action="append",
        default=[],
        help="a namespace whose pods may scrape the job pods' metrics port (repeatable;"
        " default: any)",
    )
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING... (default INFO)")
    return p


async def kubernetes_client() -> client.ApiClient:
    """A client configured from the service account in a cluster, else the kubeconfig,
    without aiohttp's per-request environment lookups (``kubeapi.client_for``)."""
    configuration_ = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(  # type: ignore[no-untyped-call]
            client_configuration=configuration_
        )
    else:
        await config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration_
        )
    return kubeapi.client_for(configuration_)


def health_app(metrics: handlers.Metrics, elector: lease.LeaseElector) -> web.Application:
    """``/metrics`` and ``/healthz`` (alive, leading or not)."""

    async def serve_metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=metrics.exposition(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "leader": elector.leading})

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", healthz)
    return app


def _identity(given: str | None) -> str:
    if given:
        return given
    base = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{base}_{uuid.uuid4().hex[:8]}"


async def serve(args: argparse.Namespace) -> int:
    namespaces: list[str] = list(args.namespace)
    lease_namespace = (
        args.lease_namespace
        or os.environ.get("POD_NAMESPACE")
        or (namespaces[0] if namespaces else "default")
    )
    identity = _identity(args.identity)
    timings = lease.Timings(args.lease_duration, args.renew_deadline, args.retry_period)
    metrics = handlers.Metrics()
    options = handlers.Options(
        max_concurrent_passes=args.max_concurrent_passes,
        planning=configuration.OperatorConfiguration(
            savepoint_on_deletion=args.savepoint_on_deletion,
            deletion_savepoint_timeout=args.deletion_savepoint_timeout,
            progress_check_interval=args.progress_check_interval,
            reconcile_interval=args.reconcile_interval,
            allow_privileged_pods=args.allow_privileged_pods,
            checkpoint_status_interval=args.checkpoint_status_interval,
        ),
        acting=actor.Settings(
            resolve=args.jobmanager_url_template,
            savepoint_mounts=tuple(args.savepoint_volume),
            savepoint_buckets=tuple(args.savepoint_bucket),
            instance=identity,
            network=network.Settings(
                enabled=args.network_policy,
                operator_namespace=args.operator_namespace or os.environ.get("POD_NAMESPACE"),
                rest_namespaces=tuple(args.rest_namespace),
                metrics_namespaces=tuple(args.metrics_namespace),
            ),
        ),
    )
    api = await kubernetes_client()
    elector = lease.LeaseElector(
        api,
        lease_namespace,
        args.lease_name,
        identity,
        timings,
        on_change=lambda leading: metrics.leader.set(1 if leading else 0),
    )
    reconciler = handlers.Reconciler(
        kubernetes_client, options, metrics, leading=lambda: elector.leading
    )
    registry = handlers.build_registry(reconciler, login=True)

    loop = asyncio.get_running_loop()
    shutdown = asyncio.Event()

    def install_signals() -> None:
        # kopf puts its own handlers in place while it runs; ours are back between runs
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, shutdown.set)

    async def lead(stop: asyncio.Event) -> None:
        log.info("%s leads: starting the handlers", identity)
        ready = asyncio.Event()

        async def take_signals_back() -> None:
            # kopf installs its own SIGTERM handler before it is ready, which would stop
            # kopf first (with every timer of a thousand StreamJobs) and only then hand
            # the Lease back; ours stops the passes and hands it back first
            await ready.wait()
            install_signals()

        signals = asyncio.create_task(take_signals_back())
        try:
            await handlers.operate(registry, namespaces=namespaces, stop=stop, ready=ready)
        finally:
            signals.cancel()
            install_signals()
            log.info("%s: the handlers stopped", identity)

    runner: web.AppRunner | None = None
    if args.metrics_port:
        runner = web.AppRunner(health_app(metrics, elector), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.metrics_host, args.metrics_port).start()
    install_signals()
    log.info(
        "%s campaigns for the Lease %s/%s (watching %s)",
        identity,
        lease_namespace,
        args.lease_name,
        ", ".join(namespaces) or "every namespace",
    )
    election = asyncio.create_task(elector.run(lead), name="leader-election")
    signalled = asyncio.create_task(shutdown.wait(), name="shutdown")
    code = 0
    try:
        await asyncio.wait({election, signalled}, return_when=asyncio.FIRST_COMPLETED)
        if election.done():
            election.result()  # kopf stopped on its own (a signal reached it): exit
        else:
            # Stop reconciling (no pass starts; those under way lose their client), then
            # hand the Lease back so a standby leads at its next retry, then let kopf
            # wind down within the elector's grace.
            log.info("%s is stopping: no new passes; handing the Lease back", identity)
            await reconciler.close()
            await elector.resign()
            try:
                await asyncio.wait_for(asyncio.shield(election), elector.stop_grace + 5.0)
            except TimeoutError:
                election.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await election
    except Exception:
        log.exception("the operator failed")
        code = 1
    finally:
        signalled.cancel()
        if runner is not None:
            await runner.cleanup()
        await reconciler.close()
        await api.close()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # kopf reports every handler call at INFO ("Timer ... succeeded", every few seconds)
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        lease.Timings(args.lease_duration, args.renew_deadline, args.retry_period)
    except ValueError as e:
        parser().error(str(e))
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
