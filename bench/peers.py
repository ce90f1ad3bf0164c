"""streamjob against Flink and Bytewax on keyed_count's workload, measured in one session.

The workload is ``bench/keyed_count.py``'s: EVENTS events, event ``i`` = ``(i % keys,
i // keys)``, key_by the key, ``(count, sum)`` per key in keyed state, one row ``"key count
sum"`` per key when the input ends, exactly-once checkpoints (Bytewax: recovery snapshots)
every INTERVAL ms, and the output checked exactly (``keyed_count.check_output``).

- streamjob: ``keyed_count.run_one`` at parallelism 1 (one TaskManager process and the
  JobManager), hashmap state backend; CPU of both processes from the submission on.
- Flink: ``bench/peers/KeyedCount.java`` (DataStream API, KeyedProcessFunction with a
  ValueState and an end-of-time event-time timer per key, FileSink), compiled here against
  a Flink distribution's jars and run in a local MiniCluster in one JVM at parallelism 1,
  hashmap state backend, checkpoints to a temporary directory.  CPU of the JVM (all
  threads) from the job's submission on (the JVM's and the MiniCluster's start-up, several
  CPU-seconds, are printed apart).
- Bytewax: ``bench/peers/bytewax_count.py`` (``fold_final`` per key, Bytewax's FileSink),
  one worker, recovery snapshots every epoch of INTERVAL ms into a SQLite recovery
  directory.  CPU of the process (all threads) while the dataflow runs.

A peer that is not installed is skipped with the reason and how to install it.  Runs are
interleaved (each repeat runs every engine once), so the ratios are medians of per-repeat
pairs that saw the same machine.

    uv run python bench/peers.py [--events 10000000] [--keys 100000] [--interval 1000]
        [--repeat 3] [--bytewax-python PATH] [--pyflink-python PATH] [--flink-home DIR]
        [--engines streamjob,flink,bytewax]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import common
import keyed_count

PEERS = common.BENCH_DIR / "peers"
INSTALL = (
    "uv venv /tmp/peers-venv --python 3.11 && uv pip install --python /tmp/peers-venv/bin/python"
)
# log4j2: warnings, and the checkpoint coordinator's lines (checkpoints are counted from them).
LOG4J = """\
rootLogger.level = WARN
rootLogger.appenderRef.console.ref = console
appender.console.name = console
appender.console.type = CONSOLE
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{HH:mm:ss,SSS} %-5p %c{1} - %m%n
logger.checkpoint.name = org.apache.flink.runtime.checkpoint.CheckpointCoordinator
logger.checkpoint.level = INFO
"""


@dataclass
class Run:
    events: int
    wall_s: float
    cpu_s: float
    startup_cpu_s: float | None  # before the job ran (None: not measured)
    other_cores: float
    checkpoints: int
    exact: bool
    detail: str

    @property
    def events_per_s(self) -> float:
        return self.events / self.wall_s

    @property
    def events_per_cpu_s(self) -> float:
        return self.events / self.cpu_s


@dataclass
class Engine:
    name: str
    setup: str  # how it runs (version, state backend, checkpoints)
    runs: list[Run]
    skipped: str = ""

    def median(self, attr: str) -> float:
        return common.median([getattr(r, attr) for r in self.runs])

    def spread(self, attr: str) -> tuple[float, float]:
        values = [getattr(r, attr) for r in self.runs]
        return min(values), max(values)


def child_cpu_s() -> float:
    """CPU time of this process's waited-for children (utime + stime, all their threads)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(cmd: list[str], log: Path, cwd: Path) -> tuple[str, float, float]:
    """Run ``cmd`` to its end; (its stdout, its CPU seconds, other processes' cores)."""
    before = child_cpu_s()
    other = common.OtherLoad()
    with open(log, "wb") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, cwd=cwd, check=False)
    cpu = child_cpu_s() - before
    stdout = done.stdout.decode(errors="replace")
    if done.returncode != 0:
        raise common.BenchError(
            f"{cmd[0]} exited with {done.returncode}; see {log}:\n{stdout[-2000:]}"
        )
    return stdout, cpu, other.cores(cpu)


# -- streamjob ----------------------------------------------------------------------------


def run_streamjob(a: argparse.Namespace, workdir: Path) -> Run:
    r = asyncio.run(
        keyed_count.run_one(
            1, True, a.events, a.keys, a.interval, workdir, {"state.backend.type": "hashmap"}
        )
    )
    return Run(
        events=r.events,
        wall_s=r.wall_s,
        cpu_s=r.engine_cpu_s,
        startup_cpu_s=None,  # the cluster starts before the measurement
        other_cores=r.other_cores,
        checkpoints=len(r.durations_ms),
        exact=r.exact,
        detail=r.detail,
    )


# -- Flink --------------------------------------------------------------------------------


def site_packages(python: str, module: str) -> Path | None:
    """The directory of ``module`` as imported by ``python``, or None."""
    code = f"import importlib.util as u; s = u.find_spec({module!r}); print(s.origin if s else '')"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    origin = out.stdout.strip()
    return Path(origin).parent if out.returncode == 0 and origin else None


def find_flink(a: argparse.Namespace) -> tuple[Path | None, str]:
    """Flink's lib directory, or None and why not."""
    how = (
        f"install it with `{INSTALL} apache-flink` and pass --pyflink-python"
        " /tmp/peers-venv/bin/python, or pass --flink-home (a Flink distribution);"
        " javac and java (JDK 11+) must be on PATH"
    )
    for tool in ("javac", "java"):
        if shutil.which(tool) is None:
            return None, f"no {tool} on PATH; {how}"
    home = a.flink_home or os.environ.get("FLINK_HOME")
    if home:
        lib = Path(home) / "lib"
        if not list(lib.glob("flink-dist*.jar")):
            return None, f"no flink-dist jar in {lib}; {how}"
        return lib, ""
    if a.pyflink_python:
        package = site_packages(a.pyflink_python, "pyflink")
        if package is None:
            return None, f"{a.pyflink_python} cannot import pyflink; {how}"
        lib = package / "lib"
        if not list(lib.glob("flink-dist*.jar")):
            return None, f"no flink-dist jar in {lib}; {how}"
        return lib, ""
    return None, f"no --flink-home, FLINK_HOME or --pyflink-python; {how}"


def flink_version(lib: Path) -> str:
    jars = sorted(lib.glob("flink-dist*.jar"))
    return jars[0].stem.removeprefix("flink-dist-").removeprefix("flink-dist") if jars else "?"


def compile_flink_job(lib: Path, classes: Path) -> None:
    """Compile bench/peers/KeyedCount.java into ``classes`` against the jars in ``lib``."""
    classes.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["javac", "-nowarn", "-cp", f"{lib}/*", "-d", str(classes), str(PEERS / "KeyedCount.java")],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise common.BenchError(f"javac failed:\n{done.stdout}{done.stderr}")


def run_flink(a: argparse.Namespace, lib: Path, classes: Path, workdir: Path) -> Run:
    out = workdir / "output"
    log4j = workdir / "log4j2.properties"
    log4j.write_text(LOG4J)
    cmd = [
        "java",
        f"-Dlog4j.configurationFile={log4j}",
        "-cp",
        f"{classes}:{lib}/*",
        "KeyedCount",
        str(out),
        str(a.events),
        str(a.keys),
        str(a.interval),
        str(workdir / "checkpoints"),
    ]
    stdout, total_cpu, other = run_child(cmd, workdir / "flink.log", workdir)
    (workdir / "flink.out").write_text(stdout)
    marks: dict[str, int] = {}
    checkpoints = 0
    for line in stdout.splitlines():
        words = line.split()
        if words[:1] == ["submitted-cpu-ns"]:
            marks["submitted"] = int(words[1])
        elif words[:1] == ["finished-cpu-ns"]:
            marks["finished"], marks["runtime"] = int(words[1]), int(words[3])
        elif "Completed checkpoint" in line:
            checkpoints += 1
    if len(marks) != 3:
        raise common.BenchError(f"the Flink job printed no CPU marks; see {workdir}")
    cpu = (marks["finished"] - marks["submitted"]) / 1e9
    exact, detail = keyed_count.check_output(out, a.events, a.keys)
    return Run(
        events=a.events,
        wall_s=marks["runtime"] / 1000,
        cpu_s=cpu,
        startup_cpu_s=total_cpu - cpu,
        other_cores=other,
        checkpoints=checkpoints,
        exact=exact,
        detail=detail,
    )


# -- Bytewax ------------------------------------------------------------------------------


def find_bytewax(a: argparse.Namespace) -> tuple[str | None, str]:
    """A Python that imports bytewax, or None and why not."""
    python = a.bytewax_python or sys.executable
    how = (
        f"install it with `{INSTALL} bytewax` and pass --bytewax-python /tmp/peers-venv/bin/python"
    )
    if site_packages(python, "bytewax") is None:
        return None, f"{python} cannot import bytewax; {how}"
    return python, ""


def bytewax_version(python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('bytewax'))"
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"


def run_bytewax(a: argparse.Namespace, python: str, workdir: Path) -> Run:
    out = workdir / "output"
    out.mkdir()
    recovery = workdir / "recovery"
    cmd = [
        python,
        str(PEERS / "bytewax_count.py"),
        str(out / "part-0"),
        str(a.events),
        str(a.keys),
        str(a.interval),
        str(a.bytewax_batch),
        str(recovery),
    ]
    stdout, total_cpu, other = run_child(cmd, workdir / "bytewax.log", workdir)
    marks = [line.split() for line in stdout.splitlines() if line.startswith("cpu-s ")]
    if not marks:
        raise common.BenchError(f"the Bytewax dataflow printed no CPU mark; see {workdir}")
    cpu, wall = float(marks[-1][1]), float(marks[-1][3])
    with sqlite3.connect(recovery / "part-0.sqlite3") as db:
        row = db.execute("select max(commit_epoch) from commits").fetchone()
    exact, detail = keyed_count.check_output(out, a.events, a.keys)
    return Run(
        events=a.events,
        wall_s=wall,
        cpu_s=cpu,
        startup_cpu_s=total_cpu - cpu,
        other_cores=other,
        checkpoints=int(row[0] or 0),
        exact=exact,
        detail=detail,
    )


# -- report -------------------------------------------------------------------------------


def describe(engine: str, r: Run) -> str:
    startup = (
        "cluster start-up not measured"
        if r.startup_cpu_s is None
        else f"start-up {r.startup_cpu_s:.1f} s apart"
    )
    return (
        f"{engine}: {r.wall_s:.1f} s, {r.events_per_s:,.0f} events/s, CPU {r.cpu_s:.1f} s"
        f" ({r.events_per_cpu_s:,.0f} events/CPU-s; {startup}),"
        f" {r.checkpoints} checkpoints, other processes {r.other_cores:.2f} cores;"
        f" exact: {'yes' if r.exact else 'NO'} ({r.detail})"
    )


def print_table(engines: list[Engine], repeat: int) -> None:
    print()
    ran = [e for e in engines if not e.skipped]
    if ran:
        print(f"medians of {repeat} runs per engine (min-max)")
        print(
            "| engine | events/s (min-max) | events/CPU-s (min-max) | CPU s"
            " | checkpoints (Bytewax: epochs) | other load | exact |"
        )
        print("|---|---:|---:|---:|---:|---:|---|")
    for e in engines:
        if e.skipped:
            continue
        low, high = e.spread("events_per_cpu_s")
        wlow, whigh = e.spread("events_per_s")
        print(
            f"| {e.name} ({e.setup}) | {e.median('events_per_s'):,.0f}"
            f" ({wlow / 1000:,.0f}-{whigh / 1000:,.0f} k) | {e.median('events_per_cpu_s'):,.0f}"
            f" ({low / 1000:,.0f}-{high / 1000:,.0f} k) | {e.median('cpu_s'):.1f}"
            f" | {e.median('checkpoints'):.0f} | {e.median('other_cores'):.2f} cores"
            f" | {'yes' if all(r.exact for r in e.runs) else 'NO'} |"
        )
    for e in engines:
        if e.skipped:
            print(f"{e.name}: skipped: {e.skipped}")
    if ran:
        print(
            "other processes used (median per engine) "
            + ", ".join(f"{e.name} {e.median('other_cores'):.2f}" for e in ran)
            + f" cores of the machine's {os.cpu_count()} during the runs"
        )


def print_ratios(engines: list[Engine]) -> None:
    by_name = {e.name: e for e in engines if not e.skipped}
    ours = by_name.get("streamjob")
    if ours is None:
        return
    print()
    print("streamjob relative to its peers, this session (median of per-repeat ratios, min-max)")
    for name in ("Flink", "Bytewax"):
        peer = by_name.get(name)
        if peer is None:
            print(f"  streamjob / {name}: - ({name} skipped)")
            continue
        for attr, label in (("events_per_cpu_s", "events/CPU-s"), ("events_per_s", "events/s")):
            ratios = [
                getattr(x, attr) / getattr(y, attr)
                for x, y in zip(ours.runs, peer.runs, strict=False)
            ]
            print(
                f"  streamjob / {name} {label}: {common.median(ratios):.2f}x"
                f" ({min(ratios):.2f}-{max(ratios):.2f}x over {len(ratios)} pairs)"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=10_000_000)
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--interval", type=int, default=1000, help="checkpoint interval, ms")
    p.add_argument("--repeat", type=int, default=3, help="runs per engine (medians)")
    p.add_argument(
        "--engines",
        type=lambda s: s.split(","),
        default=["streamjob", "flink", "bytewax"],
        help="comma-separated subset of streamjob,flink,bytewax",
    )
    p.add_argument(
        "--bytewax-python",
        default=None,
        help="a Python that imports bytewax (default: this interpreter)",
    )
    p.add_argument(
        "--bytewax-batch", type=int, default=1000, help="events per Bytewax source batch"
    )
    p.add_argument(
        "--pyflink-python",
        default=None,
        help="a Python with apache-flink installed: its pyflink/lib jars are the Flink used",
    )
    p.add_argument("--flink-home", default=None, help="a Flink distribution (default: FLINK_HOME)")
    p.add_argument(
        "--workdir",
        default=None,
        type=common.directory,
        help="keep every run's directory under this one",
    )
    a = p.parse_args()

    print(
        f"keyed count/sum, {a.events:,} events over {a.keys:,} keys, parallelism 1,"
        f" exactly-once checkpoints every {a.interval} ms, exact output check",
        flush=True,
    )
    engines: list[Engine] = []
    if "streamjob" in a.engines:
        engines.append(Engine("streamjob", "hashmap", []))
    lib, reason = find_flink(a) if "flink" in a.engines else (None, "not in --engines")
    classes = Path(tempfile.mkdtemp(prefix="peers-flink-classes-"))
    if lib is not None:
        try:
            compile_flink_job(lib, classes)
        except common.BenchError as e:
            lib, reason = None, str(e)
    flink = Engine("Flink", f"{flink_version(lib)}, hashmap" if lib else "", [], reason)
    engines.append(flink)
    python, reason = find_bytewax(a) if "bytewax" in a.engines else (None, "not in --engines")
    bytewax = Engine(
        "Bytewax",
        f"{bytewax_version(python)}, batch {a.bytewax_batch}" if python else "",
        [],
        reason,
    )
    engines.append(bytewax)
    for e in engines:
        if e.skipped:
            print(f"  {e.name}: skipped: {e.skipped}", flush=True)

    for _ in range(a.repeat):
        for e in engines:
            if e.skipped:
                continue
            workdir = Path(tempfile.mkdtemp(prefix=f"peers-{e.name.lower()}-", dir=a.workdir))
            if e.name == "streamjob":
                r = run_streamjob(a, workdir)
            elif e.name == "Flink":
                assert lib is not None
                r = run_flink(a, lib, classes, workdir)
            else:
                assert python is not None
                r = run_bytewax(a, python, workdir)
            e.runs.append(r)
            print(f"  {describe(e.name, r)}", flush=True)
            if r.exact and a.workdir is None:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                print(f"    logs and output kept in {workdir}")
    shutil.rmtree(classes, ignore_errors=True)
    print_table(engines, a.repeat)
    print_ratios(engines)
    sys.exit(0 if all(r.exact for e in engines for r in e.runs) else 1)


if __name__ == "__main__":
    main()
