"""``streamjob``: run jobs on an embedded local cluster or a running JobManager.

Exit codes: 0 success (job FINISHED), 1 the job FAILED, 2 bad usage or input,
3 the job was CANCELED, 4 the JobManager is unreachable, 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
from pathlib import Path

from streamjob_runtime import __version__, config, jobfile, logs

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELED, EXIT_UNREACHABLE, EXIT_INTERRUPTED = (
    0,
    1,
    2,
    3,
    4,
    130,
)


def _options(pairs: list[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"streamjob: -D expects key=value, got {pair!r}")
        options[key.strip()] = value.strip()
    return options


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="streamjob", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"streamjob {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a job (on a local cluster unless --jobmanager is given)")
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
    run.add_argument(
        "-d", "--detached", action="store_true", help="submit and return (only with --jobmanager)"
    )
    run.add_argument("--jobmanager", metavar="HOST:PORT", help="REST address of a JobManager")
    run.add_argument(
        "--taskmanagers",
        type=int,
        default=None,
        help="local cluster: TaskManager processes (default: one per parallel slot)",
    )
    run.add_argument("--slots", type=int, default=1, help="local cluster: slots per TaskManager")
    run.add_argument(
        "--workdir", default=None, help="local cluster: directory for logs and checkpoints"
    )

    jm = sub.add_parser("jobmanager", help="start a JobManager process")
    jm.add_argument("--host", default="127.0.0.1")
    jm.add_argument("--rpc-port", type=int, default=6123)
    jm.add_argument("--rest-port", type=int, default=8081)
    jm.add_argument("--checkpoint-dir", required=True)
    jm.add_argument("--heartbeat-interval", type=int, default=10_000, help="ms")
    jm.add_argument("--heartbeat-timeout", type=int, default=50_000, help="ms")
    jm.add_argument("--slot-request-timeout", type=int, default=300_000, help="ms")
    jm.add_argument("--ready-file", default=None, help="write the bound ports here once ready")

    tm = sub.add_parser("taskmanager", help="start a TaskManager process")
    tm.add_argument(
        "--jobmanager", required=True, metavar="HOST:PORT", help="JobManager RPC address"
    )
    tm.add_argument("--slots", type=int, default=1)
    tm.add_argument("--host", default="127.0.0.1", help="address other TaskManagers reach us at")
    tm.add_argument("--data-port", type=int, default=0)
    tm.add_argument("--id", default=None)

    for name, help_text in (
        ("list", "list jobs"),
        ("info", "show a job"),
        ("cancel", "cancel a job"),
    ):
        c = sub.add_parser(name, help=help_text)
        if name != "list":
            c.add_argument("job_id")
        c.add_argument("--jobmanager", required=True, metavar="HOST:PORT")
    return p


def _url(address: str) -> str:
    return address if address.startswith("http") else f"http://{address}"


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if args.command == "jobmanager":
        from streamjob_runtime.jobmanager import dispatcher

        logs.setup("jobmanager")
        cluster = config.ClusterConfig(
            checkpoint_dir=args.checkpoint_dir,
            heartbeat_interval_ms=args.heartbeat_interval,
            heartbeat_timeout_ms=args.heartbeat_timeout,
            slot_request_timeout_ms=args.slot_request_timeout,
        )
        try:
            cluster.validate()
        except config.ConfigError as e:
            raise SystemExit(f"streamjob jobmanager: {e}") from None
        asyncio.run(
            dispatcher.serve(cluster, args.host, args.rpc_port, args.rest_port, args.ready_file)
        )
        return
    if args.command == "taskmanager":
        from streamjob_runtime.taskmanager import executor

        logs.setup(f"taskmanager {args.id or ''}".strip())
        executor.main(args.jobmanager, args.slots, args.host, args.data_port, args.id)
        return
    if args.command == "run":
        if args.args[:1] == ["--"]:
            args.args = args.args[1:]
        sys.exit(run(args))
    sys.exit(_rest_command(args))


def _rest_command(args: argparse.Namespace) -> int:
    from streamjob_runtime.api import client

    async def go() -> int:
        async with client.JobManagerClient(_url(args.jobmanager)) as c:
            if args.command == "list":
                for j in (await c.list_jobs()).jobs:
                    print(f"{j.jid}  {j.state.value:<11} restarts={j.restarts}  {j.name}")
            elif args.command == "info":
                print((await c.job(args.job_id)).model_dump_json(indent=2))
            elif args.command == "cancel":
                await c.cancel(args.job_id)
                print(f"cancellation of {args.job_id} requested")
        return EXIT_OK

    try:
        return asyncio.run(go())
    except client.RestError as e:
        print(f"streamjob {args.command}: {e.message}", file=sys.stderr)
        return EXIT_USAGE if e.status < 500 else EXIT_FAILED
    except OSError as e:
        print(f"streamjob: cannot reach the JobManager at {args.jobmanager}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE


def run(args: argparse.Namespace) -> int:
    from streamjob_runtime.api import client, models
    from streamjob_runtime.local import ClusterError, LocalCluster

    try:
        options = _options(args.options)
        base = config.apply_options(config.JobConfig(parallelism=args.parallelism or 1), options)
        env, graph = jobfile.load(args.job, args.args, base)  # fail fast, before any process
    except (config.ConfigError, jobfile.JobFileError) as e:
        print(f"streamjob run: {e}", file=sys.stderr)
        return EXIT_USAGE
    submission = models.JobSubmission(
        entrypoint=os.path.abspath(args.job) if args.job.endswith(".py") else args.job,
        args=args.args,
        parallelism=args.parallelism,
        config=options,
    )
    cluster = None
    if args.jobmanager:
        url = _url(args.jobmanager)
    else:
        if args.detached:
            print(
                "streamjob run: --detached needs --jobmanager (a local cluster lives only as"
                " long as the command)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="streamjob-"))
        slots_needed = graph.slots_needed
        count = args.taskmanagers or -(-slots_needed // args.slots)
        cluster = LocalCluster(workdir, taskmanagers=count, slots=args.slots)
        print(
            f"local cluster: 1 JobManager, {count} TaskManager(s) x {args.slots} slot(s);"
            f" logs in {workdir / 'logs'}"
        )
        try:
            cluster.start()
        except ClusterError as e:
            print(f"streamjob run: {e}", file=sys.stderr)
            return EXIT_FAILED
        url = cluster.rest_url

    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:

        async def go() -> int:
            async with client.JobManagerClient(url) as c:
                job_id = await c.submit(submission)
                print(
                    f"job {job_id} submitted ({env.config.name}, parallelism"
                    f" {env.config.parallelism})"
                )
                if args.detached:
                    return EXIT_OK
                last = ""
                while True:
                    details = await c.job(job_id)
                    if interrupted:
                        print("interrupted: cancelling the job")
                        await c.cancel(job_id)
                        # Poll the remote job until it reaches a terminal state.
                        while True:
                            if (await c.job(job_id)).state.terminal:
                                break
                            await asyncio.sleep(0.1)
                        return EXIT_INTERRUPTED
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

        try:
            return asyncio.run(go())
        except client.RestError as e:
            print(f"streamjob run: {e.message}", file=sys.stderr)
            return EXIT_USAGE if e.status < 500 else EXIT_FAILED
        except OSError as e:
            print(f"streamjob run: cannot reach the JobManager at {url}: {e}", file=sys.stderr)
            return EXIT_UNREACHABLE
    finally:
        signal.signal(signal.SIGINT, previous)
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
