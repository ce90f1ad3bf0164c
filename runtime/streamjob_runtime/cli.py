"""``streamjob``: run and manage jobs, on a local cluster or a running JobManager.

Exit codes: 0 success, 1 the job or operation failed, 2 bad usage or input (also
what the JobManager refuses with 4xx), 3 the job was canceled, 4 no JobManager
reachable, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from streamjob_runtime import __version__, config, jobfile, logs, security
from streamjob_runtime.ha import services as ha_services

if TYPE_CHECKING:  # the client (aiohttp) is imported lazily: process start-up stays fast
    from streamjob_runtime.api import models
    from streamjob_runtime.api.client import JobManagerClient
    from streamjob_runtime.datastream import StreamExecutionEnvironment

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELED = 3
EXIT_UNREACHABLE = 4
EXIT_INTERRUPTED = 130


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# -- the background local cluster -----------------------------------------------------------


def home() -> Path:
    return Path(os.environ.get("STREAMJOB_HOME", Path.home() / ".streamjob"))


def cluster_file() -> Path:
    return home() / "cluster.json"


def local_cluster_info() -> dict[str, object] | None:
    """The running background cluster (``streamjob cluster start``), if any."""
    try:
        info: dict[str, object] = json.loads(cluster_file().read_text())
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or not Path(f"/proc/{pid}").exists():
        return None
    return info


@dataclass(frozen=True)
class Target:
    """A JobManager's REST address and what the CLI presents to and verifies it with."""

    url: str
    token: str | None = None
    ca_file: str | None = None


def _local_credentials(info: Mapping[str, object] | None) -> tuple[str | None, str | None]:
    """The local cluster's REST token and CA file, if it has them."""
    if not info:
        return None, None
    token = None
    token_file, ca_file = info.get("token_file"), info.get("ca_file")
    if isinstance(token_file, str):
        try:
            token = security.read_token(token_file)
        except security.SecurityError:
            token = None
    return token, ca_file if isinstance(ca_file, str) else None


def jobmanager_target(args: argparse.Namespace) -> Target:
    """:func:`jobmanager_url` with credentials: --token/STREAMJOB_TOKEN and
    --ca-file/STREAMJOB_CA_FILE, else those the local cluster wrote in its workdir."""
    url = jobmanager_url(args)
    local = local_cluster_info()
    token, ca_file = _local_credentials(local)
    if local is None or local.get("rest_url") != url:
        token = ca_file = None
    return Target(
        url, getattr(args, "token", None) or token, getattr(args, "ca_file", None) or ca_file
    )


def jobmanager_url(args: argparse.Namespace) -> str:
    """The REST address to talk to: --jobmanager, else the HA leader, else the local cluster.

    ``HOST:PORT`` means HTTPS (``http://`` with ``--insecure``)."""
    address: str | None = args.jobmanager
    if address:
        if address.startswith(("http://", "https://")):
            return address
        return f"{'http' if getattr(args, 'insecure', False) else 'https'}://{address}"
    if getattr(args, "ha", "none") != "none":
        return _ha_leader_url(args)
    info = local_cluster_info()
    if info is None:
        raise CliError(
            "no --jobmanager given and no local cluster is running; start one with"
            " `streamjob cluster start`, pass --jobmanager HOST:PORT, or name the HA"
            " services (--ha etcd --ha-etcd-endpoints ...)",
            EXIT_UNREACHABLE,
        )
    return str(info["rest_url"])


def _ha_leader_url(args: argparse.Namespace) -> str:
    from streamjob_runtime.ha import factory

    cfg = _ha_config(args)

    async def lookup() -> str | None:
        store = factory.create_store(cfg)
        try:
            leader = await store.leader()
        finally:
            await store.close()
        return None if leader is None else leader.rest_url

    try:
        url = asyncio.run(lookup())
    except Exception as e:
        raise CliError(f"cannot read the HA metadata: {e!r}", EXIT_UNREACHABLE) from None
    if url is None:
        raise CliError("the HA metadata names no leader right now; retry", EXIT_UNREACHABLE)
    return url


# -- argument parsing -----------------------------------------------------------------------


def _options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise CliError(f"-D expects key=value, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def _jobmanager_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--jobmanager",
        "-m",
        metavar="HOST:PORT",
        help="REST address of the JobManager, https://HOST:PORT (default: the HA leader"
        " given --ha, else the local cluster)",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("STREAMJOB_TOKEN") or None,
        help="the JobManager's REST bearer token (env STREAMJOB_TOKEN; default: the local"
        " cluster's)",
    )
    p.add_argument(
        "--ca-file",
        default=os.environ.get("STREAMJOB_CA_FILE") or None,
        metavar="FILE",
        help="CA certificate (PEM) the JobManager's HTTPS certificate is verified with (env"
        " STREAMJOB_CA_FILE; default: the local cluster's)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="HOST:PORT means http:// (a JobManager started with --insecure); with `run`"
        " and no cluster, the embedded cluster runs without TLS and REST token",
    )
    _ha_arguments(p.add_argument_group("finding the leader through HA"))


def _process_security_arguments(p: argparse.ArgumentParser, role: str) -> None:
    """The flags of the SECURITY-CONTRACT for ``streamjob jobmanager|taskmanager``."""
    group = p.add_argument_group("security")
    group.add_argument(
        "--tls-dir",
        default=os.environ.get("STREAMJOB_TLS_DIR") or None,
        metavar="DIR",
        help="ca.crt, tls.crt, tls.key: mutual TLS on every internal connection"
        + (" and HTTPS for REST" if role == "jobmanager" else "")
        + " (env STREAMJOB_TLS_DIR); required unless --insecure",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="allow running without TLS"
        + (" and REST token" if role == "jobmanager" else "")
        + ": anyone who reaches the ports owns the job (local experiments only)",
    )
    if role == "jobmanager":
        group.add_argument(
            "--rest-token-file",
            default=os.environ.get("STREAMJOB_REST_TOKEN_FILE") or None,
            metavar="FILE",
            help="the bearer token every REST request must carry (env"
            " STREAMJOB_REST_TOKEN_FILE); required unless --insecure",
        )
    group.add_argument(
        "--job-roots",
        default=":".join(security.DEFAULT_JOB_ROOTS),
        metavar="DIR[:DIR...]",
        help="job files only from these directories (module names are always allowed);"
        " default %(default)s",
    )
    group.add_argument(
        "--storage-roots",
        default=None,
        metavar="DIR[:DIR...]",
        help="savepoint targets and restore paths only inside these (local directories or"
        " s3://bucket/prefix)"
        + (
            " (default: the checkpoint and savepoint directories)"
            if role == "jobmanager"
            else " (default: anywhere; the JobManager checks them)"
        ),
    )
    group.add_argument(
        "--metrics-port",
        type=int,
        default=9249,
        help="plain, unauthenticated HTTP port for /metrics, /healthz, /readyz (probes)",
    )


def _ha_arguments(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--ha", choices=["none", "etcd", "kubernetes"], default="none")
    group.add_argument("--ha-cluster-id", default="default", help="scopes the HA metadata")
    group.add_argument("--ha-etcd-endpoints", default="", help="HOST:PORT[,HOST:PORT...]")
    group.add_argument("--ha-lease-duration", type=int, default=15_000, help="ms")
    group.add_argument("--ha-renew-deadline", type=int, default=10_000, help="ms")
    group.add_argument("--ha-retry-period", type=int, default=2_000, help="ms")
    group.add_argument("--ha-namespace", default=os.environ.get("POD_NAMESPACE", "default"))
    group.add_argument("--pod-name", default=os.environ.get("POD_NAME"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamjob", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"streamjob {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run a job",
        description="Run a job. Without --jobmanager and with no local cluster running, an"
        " embedded cluster runs the job to its end and stops.",
    )
    run.add_argument("job", help="job file (.py) or module with build(env)")
    run.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="arguments passed to the job as env.args (after JOB; options go before)",
    )
    run.add_argument("-p", "--parallelism", type=int, default=None)
    run.add_argument(
        "-D",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="engine option, e.g. -D execution.checkpointing.interval=1000",
    )
    run.add_argument("-d", "--detached", action="store_true", help="submit and return")
    run.add_argument(
        "-s",
        "--from-savepoint",
        metavar="PATH",
        help="restore from a savepoint or retained checkpoint (its directory or _metadata)",
    )
    run.add_argument(
        "-n",
        "--allow-non-restored-state",
        action="store_true",
        help="drop savepoint state of operators the job no longer has",
    )
    _jobmanager_option(run)
    run.add_argument("--taskmanagers", type=int, default=None, help="embedded cluster only")
    run.add_argument("--slots", type=int, default=1, help="embedded cluster: slots per TaskManager")
    run.add_argument("--workdir", default=None, help="embedded cluster: logs and checkpoints")

    sp = sub.add_parser("savepoint", help="trigger a savepoint, or dispose of one")
    sp.add_argument("job_id", nargs="?", help="the job to savepoint")
    sp.add_argument("directory", nargs="?", help="target directory (default: the JobManager's)")
    sp.add_argument("-d", "--dispose", metavar="PATH", help="delete the savepoint at PATH")
    sp.add_argument(
        "-D",
        dest="options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --dispose: the job's s3.* options (endpoint, region, path style,"
        " credentials provider) to reach an s3:// savepoint with",
    )
    _jobmanager_option(sp)

    stop = sub.add_parser("stop", help="stop a job with a savepoint")
    stop.add_argument("job_id")
    stop.add_argument("--savepoint-dir", "-p", metavar="DIR", help="target directory")
    stop.add_argument("--drain", "-d", action="store_true", help="fire all windows first")
    _jobmanager_option(stop)

    cancel = sub.add_parser("cancel", help="cancel a job (optionally after a savepoint)")
    cancel.add_argument("job_id")
    cancel.add_argument(
        "--savepoint",
        "-s",
        nargs="?",
        const="",
        metavar="DIR",
        help="take a savepoint first (into DIR, or the JobManager's default)",
    )
    _jobmanager_option(cancel)

    for name, help_text in (("list", "list jobs"), ("info", "show a job as JSON")):
        c = sub.add_parser(name, help=help_text)
        if name == "info":
            c.add_argument("job_id")
        _jobmanager_option(c)

    cl = sub.add_parser("cluster", help="a local cluster in the background")
    cl.add_argument("action", choices=["start", "stop", "status", "run"])
    cl.add_argument("--taskmanagers", type=int, default=2)
    cl.add_argument("--slots", type=int, default=1)
    cl.add_argument("--workdir", default=None)
    cl.add_argument(
        "--insecure", action="store_true", help="no TLS and no REST token (local experiments)"
    )
    cl.add_argument(
        "--job-roots",
        default=None,
        metavar="DIR[:DIR...]",
        help="job files only from these (default: the current directory and the examples)",
    )
    cl.add_argument(
        "--storage-roots",
        default=None,
        metavar="DIR[:DIR...]",
        help="savepoints only inside these (default: the workdir, the current directory and"
        " the temporary directory)",
    )

    ha_options = argparse.ArgumentParser(add_help=False)
    _ha_arguments(ha_options.add_argument_group("high availability"))

    jm = sub.add_parser("jobmanager", help="start a JobManager process", parents=[ha_options])
    jm.add_argument(
        "--host", default="127.0.0.1", help="the address TaskManagers and clients reach us at"
    )
    jm.add_argument(
        "--bind-host",
        default=None,
        help="the address to listen on (default: --host), e.g. 0.0.0.0 for every interface",
    )
    jm.add_argument("--rpc-port", type=int, default=6123)
    jm.add_argument("--rest-port", type=int, default=8081)
    jm.add_argument("--checkpoint-dir", required=True)
    jm.add_argument("--savepoint-dir", default=None, help="default savepoint target directory")
    jm.add_argument("--heartbeat-interval", type=int, default=10_000, help="ms")
    jm.add_argument("--heartbeat-timeout", type=int, default=50_000, help="ms")
    jm.add_argument("--slot-request-timeout", type=int, default=300_000, help="ms")
    jm.add_argument("--ready-file", default=None, help="write the bound ports here once ready")

    jm.add_argument("--identity", default=None, help="this JobManager's name in elections")
    _process_security_arguments(jm, "jobmanager")

    tm = sub.add_parser("taskmanager", help="start a TaskManager process", parents=[ha_options])
    tm.add_argument(
        "--jobmanager", metavar="HOST:PORT", help="JobManager RPC address (without --ha)"
    )
    tm.add_argument("--slots", type=int, default=1)
    tm.add_argument("--host", default="127.0.0.1", help="address other TaskManagers reach us at")
    tm.add_argument("--data-port", type=int, default=0)
    tm.add_argument("--id", default=None)
    _process_security_arguments(tm, "taskmanager")
    return p


# -- commands -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "jobmanager":
        _jobmanager(args)
        return
    if args.command == "taskmanager":
        from streamjob_runtime.taskmanager import executor

        logs.setup(f"taskmanager {args.id or ''}".strip())
        executor.main(
            args.jobmanager,
            _ha_config(args),
            args.slots,
            args.host,
            args.data_port,
            args.id,
            _settings(args, None),
            args.metrics_port,
        )
        return
    if args.command == "run" and args.args[:1] == ["--"]:
        args.args = args.args[1:]
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": run,
        "savepoint": savepoint,
        "stop": stop,
        "cancel": cancel,
        "list": list_jobs,
        "info": info,
        "cluster": cluster,
    }
    try:
        code = commands[args.command](args)
    except CliError as e:
        print(f"streamjob {args.command}: {e}", file=sys.stderr)
        code = e.code
    sys.exit(code)


def _jobmanager(args: argparse.Namespace) -> None:
    from streamjob_runtime.jobmanager import dispatcher
    from streamjob_runtime.state import storage

    logs.setup("jobmanager")
    cluster_config = config.ClusterConfig(
        checkpoint_dir=args.checkpoint_dir,
        savepoint_dir=args.savepoint_dir,
        heartbeat_interval_ms=args.heartbeat_interval,
        heartbeat_timeout_ms=args.heartbeat_timeout,
        slot_request_timeout_ms=args.slot_request_timeout,
    )
    try:
        cluster_config.validate()
        locations = {"--checkpoint-dir": args.checkpoint_dir, "--savepoint-dir": args.savepoint_dir}
        for flag, value in locations.items():
            try:
                if value:
                    storage.location(value)  # a bad scheme or URL is a usage error, now
            except storage.StorageError as e:
                raise config.ConfigError(f"{flag}: {e}") from None
    except config.ConfigError as e:
        raise SystemExit(f"streamjob jobmanager: {e}") from None
    roots = [args.checkpoint_dir, *([args.savepoint_dir] if args.savepoint_dir else [])]
    code = asyncio.run(
        dispatcher.serve(
            cluster_config,
            args.host,
            args.rpc_port,
            args.rest_port,
            args.ready_file,
            _ha_config(args),
            args.identity,
            _settings(args, roots),
            args.metrics_port,
            args.bind_host,
        )
    )
    sys.exit(code)


def _settings(args: argparse.Namespace, storage_default: list[str] | None) -> security.Settings:
    """The process's security settings; exits naming the flag when one is missing or bad."""
    jobmanager = args.command == "jobmanager"
    try:
        tls = security.TlsFiles.load(args.tls_dir) if args.tls_dir else None
        token_file = getattr(args, "rest_token_file", None)
        token = security.read_token(token_file) if token_file else None
    except security.SecurityError as e:
        raise SystemExit(f"streamjob {args.command}: {e}") from None
    if not args.insecure:
        if tls is None:
            raise SystemExit(
                f"streamjob {args.command}: give --tls-dir DIR (or STREAMJOB_TLS_DIR) holding"
                " ca.crt, tls.crt and tls.key: every internal connection is mutual TLS. Pass"
                " --insecure to run without it (local experiments only)"
            )
        if jobmanager and token is None:
            raise SystemExit(
                "streamjob jobmanager: give --rest-token-file FILE (or"
                " STREAMJOB_REST_TOKEN_FILE): every REST request must carry its bearer token."
                " Pass --insecure to run without it (local experiments only)"
            )
    else:
        logs.event(
            logging.getLogger("streamjob_runtime.security"),
            "security_disabled",
            logging.WARNING,
            tls=tls is not None,
            rest_token=token is not None,
            warning="--insecure: anyone who reaches this process's ports can run code in it",
        )
    storage = security.split_roots(args.storage_roots) if args.storage_roots else None
    return security.Settings(
        tls=tls,
        rest_token=token,
        job_roots=security.split_roots(args.job_roots),
        storage_roots=storage or (tuple(storage_default) if storage_default else None),
    )


def _ha_config(args: argparse.Namespace) -> ha_services.HaConfig:
    cfg = ha_services.HaConfig(
        kind=ha_services.HaKind(args.ha),
        cluster_id=args.ha_cluster_id,
        lease_duration_ms=args.ha_lease_duration,
        renew_deadline_ms=args.ha_renew_deadline,
        retry_period_ms=args.ha_retry_period,
        etcd_endpoints=tuple(e for e in args.ha_etcd_endpoints.split(",") if e),
        namespace=args.ha_namespace,
        pod_name=args.pod_name,
    )
    try:
        cfg.validate()
    except config.ConfigError as e:
        raise SystemExit(f"streamjob {args.command}: {e}") from None
    return cfg


def _rest(target: Target, fn: Callable[[JobManagerClient], Awaitable[int]]) -> int:
    """Run ``fn(client)`` against the JobManager at ``target``, mapping errors to exit codes."""
    import aiohttp

    from streamjob_runtime.api import client

    url = target.url

    async def go() -> int:
        async with client.JobManagerClient(url, token=target.token, ca_file=target.ca_file) as c:
            return await fn(c)

    try:
        return asyncio.run(go())
    except client.RestError as e:
        if e.status in (401, 403):
            raise CliError(e.message, EXIT_USAGE) from None
        raise CliError(e.message, EXIT_USAGE if e.status < 500 else EXIT_FAILED) from None
    except aiohttp.ClientConnectorCertificateError as e:
        raise CliError(
            f"the JobManager at {url} presented a certificate this CLI cannot verify"
            f" ({e.certificate_error}); give its CA with --ca-file or STREAMJOB_CA_FILE",
            EXIT_UNREACHABLE,
        ) from None
    except OSError as e:
        raise CliError(f"cannot reach the JobManager at {url}: {e}", EXIT_UNREACHABLE) from None


async def _await_savepoint(c: JobManagerClient, job_id: str, request_id: str, what: str) -> int:
    from streamjob_runtime.api import models

    started = time.monotonic()
    print(f"{what} of job {job_id} triggered (request {request_id}); waiting", end="", flush=True)
    while True:
        status = await c.savepoint_status(job_id, request_id)
        if status.status is not models.SavepointStatus.IN_PROGRESS:
            break
        print(".", end="", flush=True)
        await asyncio.sleep(0.2)
    print(f" {time.monotonic() - started:.1f} s")
    if status.status is models.SavepointStatus.FAILED:
        print(f"{what} failed: {status.failure_cause}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{what} completed: {status.location}")
    return EXIT_OK


def _store_options(pairs: list[str]) -> config.S3Config:
    """The ``s3.*`` options of ``-D`` pairs (the job's, where its savepoints are stored);
    any other option is refused: a disposal has no job to configure."""
    options = _options(pairs)
    other = sorted(k for k in options if not k.startswith("s3."))
    if other:
        raise CliError(
            f"savepoint --dispose takes only s3.* options, not {', '.join(other)}: give the"
            " options of the job that wrote the savepoint (s3.endpoint, s3.region,"
            " s3.path.style.access, s3.credentials.provider, s3.profile)"
        )
    s3 = config.apply_options(config.JobConfig(), options).s3
    s3.validate()
    return s3


def savepoint(args: argparse.Namespace) -> int:
    if args.dispose:
        from streamjob_runtime.checkpoint import savepoint as savepoints
        from streamjob_runtime.state import storage

        if args.job_id:
            raise CliError("--dispose PATH takes no job id")
        try:
            path = savepoints.dispose(storage.location(args.dispose, _store_options(args.options)))
        except (savepoints.SavepointError, config.ConfigError) as e:
            raise CliError(str(e)) from None
        except OSError as e:
            raise CliError(
                f"{e}; nothing was deleted. Check where the store is (-D s3.endpoint=...,"
                " -D s3.region=..., or AWS_ENDPOINT_URL) and its credentials"
            ) from None
        print(f"savepoint {path} disposed")
        return EXIT_OK
    if not args.job_id:
        raise CliError("give a JOB_ID to savepoint, or --dispose PATH")
    if args.options:
        raise CliError(
            "-D is for --dispose only: a triggered savepoint uses the running job's options"
        )

    async def go(c: JobManagerClient) -> int:
        request = await c.trigger_savepoint(args.job_id, args.directory)
        return await _await_savepoint(c, args.job_id, request, "savepoint")

    return _rest(jobmanager_target(args), go)


def stop(args: argparse.Namespace) -> int:
    async def go(c: JobManagerClient) -> int:
        request = await c.stop(args.job_id, args.savepoint_dir, args.drain)
        return await _await_savepoint(c, args.job_id, request, "stop-with-savepoint")

    return _rest(jobmanager_target(args), go)


def cancel(args: argparse.Namespace) -> int:
    async def go(c: JobManagerClient) -> int:
        if args.savepoint is None:
            await c.cancel(args.job_id)
            print(f"job {args.job_id} cancelled")
            return EXIT_OK
        request = await c.trigger_savepoint(args.job_id, args.savepoint or None, cancel_job=True)
        return await _await_savepoint(c, args.job_id, request, "cancel-with-savepoint")

    return _rest(jobmanager_target(args), go)


def list_jobs(args: argparse.Namespace) -> int:
    async def go(c: JobManagerClient) -> int:
        jobs = (await c.list_jobs()).jobs
        if not jobs:
            print("no jobs")
        for j in jobs:
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000))
            print(f"{j.jid}  {j.state.value:<11} {started}  restarts={j.restarts}  {j.name}")
        return EXIT_OK

    return _rest(jobmanager_target(args), go)


def info(args: argparse.Namespace) -> int:
    async def go(c: JobManagerClient) -> int:
        print((await c.job(args.job_id)).model_dump_json(indent=2))
        return EXIT_OK

    return _rest(jobmanager_target(args), go)


def cluster(args: argparse.Namespace) -> int:
    if args.action == "status":
        current = local_cluster_info()
        print(json.dumps(current, indent=2) if current else "no local cluster is running")
        return EXIT_OK if current else EXIT_UNREACHABLE
    if args.action == "stop":
        current = local_cluster_info()
        if current is None:
            raise CliError("no local cluster is running", EXIT_UNREACHABLE)
        pid = int(str(current["pid"]))
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster_file().unlink(missing_ok=True)
        print("local cluster stopped")
        return EXIT_OK
    if args.action == "start":
        if local_cluster_info() is not None:
            raise CliError(f"a local cluster is already running ({cluster_file()})")
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="streamjob-cluster-"))
        workdir.mkdir(parents=True, exist_ok=True)
        home().mkdir(parents=True, exist_ok=True)
        cluster_file().unlink(missing_ok=True)
        with open(workdir / "cluster.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamjob_runtime.cli", "cluster", "run",
                 "--taskmanagers", str(args.taskmanagers), "--slots", str(args.slots),
                 "--workdir", str(workdir),
                 *(["--insecure"] if args.insecure else []),
                 *(["--job-roots", args.job_roots] if args.job_roots else []),
                 *(["--storage-roots", args.storage_roots] if args.storage_roots else [])],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while (current := local_cluster_info()) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CliError(f"the local cluster did not start; see {workdir / 'cluster.log'}")
            time.sleep(0.05)
        print(
            f"local cluster running: JobManager at {current['rest_url']},"
            f" {args.taskmanagers} TaskManager(s) x {args.slots} slot(s); workdir {workdir}"
        )
        return EXIT_OK
    return _run_cluster(args)


def _run_cluster(args: argparse.Namespace) -> int:
    """``cluster run``: the foreground process behind ``cluster start``."""
    from streamjob_runtime.local import LocalCluster

    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    workdir = Path(args.workdir)
    local = LocalCluster(
        workdir,
        taskmanagers=args.taskmanagers,
        slots=args.slots,
        insecure=args.insecure,
        job_roots=security.split_roots(args.job_roots) or None,
        storage_roots=security.split_roots(args.storage_roots) or None,
    )
    with local:
        tmp = cluster_file().with_suffix(".tmp")
        info = {"rest_url": local.rest_url, "pid": os.getpid(), "workdir": str(workdir)}
        if not args.insecure:
            info.update(token_file=str(local.token_file), ca_file=str(local.ca_file))
        tmp.write_text(json.dumps(info))
        tmp.replace(cluster_file())
        while not stopping:
            time.sleep(0.1)
    cluster_file().unlink(missing_ok=True)
    return EXIT_OK


def _absolute(path: str) -> str:
    """A local path made absolute (the JobManager has another cwd); URLs stay as given."""
    return path if "://" in path else os.path.abspath(path)


def run(args: argparse.Namespace) -> int:
    from streamjob_runtime.api import models

    try:
        options = _options(args.options)
        base = config.apply_options(config.JobConfig(parallelism=args.parallelism or 1), options)
        env, graph = jobfile.load(args.job, args.args, base)  # fail fast, before any process
    except (config.ConfigError, jobfile.JobFileError) as e:
        raise CliError(str(e)) from None
    submission = models.JobSubmission(
        entrypoint=os.path.abspath(args.job) if args.job.endswith(".py") else args.job,
        args=args.args,
        parallelism=args.parallelism,
        config=options,
        savepoint_path=_absolute(args.from_savepoint) if args.from_savepoint else None,
        allow_non_restored_state=args.allow_non_restored_state,
    )
    if args.jobmanager or args.ha != "none" or local_cluster_info() is not None:
        return _submit_and_follow(jobmanager_target(args), submission, env, args.detached)
    if args.detached:
        raise CliError(
            "--detached needs a cluster that outlives the command: start one with"
            " `streamjob cluster start` or pass --jobmanager"
        )
    from streamjob_runtime.local import ClusterError, LocalCluster

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="streamjob-"))
    count = args.taskmanagers or -(-graph.slots_needed // args.slots)
    local = LocalCluster(
        workdir,
        taskmanagers=count,
        slots=args.slots,
        insecure=args.insecure,
        job_roots=_local_job_roots(args.job),
    )
    print(
        f"local cluster: 1 JobManager, {count} TaskManager(s) x {args.slots} slot(s);"
        f" logs in {workdir / 'logs'}"
    )
    try:
        local.start()
    except ClusterError as e:
        raise CliError(str(e), EXIT_FAILED) from None
    try:
        target = Target(local.rest_url, local.token, str(local.ca_file) if local.ca_file else None)
        return _submit_and_follow(target, submission, env, detached=False)
    finally:
        local.stop()


def _local_job_roots(job: str) -> list[str]:
    """An embedded cluster's job roots: the current directory, the examples, and the
    job file's own directory."""
    roots = [os.getcwd()]
    examples = Path(__file__).resolve().parent.parent.parent / "examples"
    if examples.is_dir():
        roots.append(str(examples))
    if jobfile.is_path(job):
        roots.append(os.path.dirname(os.path.abspath(job)))
    return roots


def _submit_and_follow(
    target: Target,
    submission: models.JobSubmission,
    env: StreamExecutionEnvironment,
    detached: bool,
) -> int:
    from streamjob_runtime.api import models

    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True

    async def go(c: JobManagerClient) -> int:
        job_id = await c.submit(submission)
        restored = f", restoring {submission.savepoint_path}" if submission.savepoint_path else ""
        print(
            f"job {job_id} submitted ({env.config.name}, parallelism"
            f" {env.config.parallelism}{restored})"
        )
        if detached:
            return EXIT_OK
        last = ""
        while True:
            details = await c.job(job_id)
            if interrupted:
                print("interrupted: cancelling the job")
                await c.cancel(job_id)
                while True:  # poll the JobManager until the cancellation completes
                    if (await c.job(job_id)).state.terminal:
                        return EXIT_INTERRUPTED
                    await asyncio.sleep(0.1)
            if details.state.value != last:
                last = details.state.value
                print(f"job {job_id}: {last}")
            if details.state.terminal:
                break
            await asyncio.sleep(0.2)
        stats = await c.checkpoints(job_id)
        print(
            f"job {job_id} {details.state.value} in {details.duration_ms / 1000:.1f} s:"
            f" {stats.counts.completed} checkpoints, {details.restarts} restarts"
        )
        if details.state is models.JobStatus.FAILED:
            print(f"cause: {details.failure_cause}", file=sys.stderr)
            return EXIT_FAILED
        if details.state is models.JobStatus.CANCELED:
            return EXIT_CANCELED
        return EXIT_OK

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        return _rest(target, go)
    finally:
        signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    main()
