"""The container image, checked without Docker.

The static checks read the Dockerfile as Docker does (``tests.delivery.dockerfile``):
two stages on one Python, a final stage without build tools running as UID 10001 with
the examples, and a build context that lets through every file a COPY names.

The recipe test replays the builder stage outside Docker: in a temporary root it
copies what the builder's COPY instructions copy (through the .dockerignore), sets its
ENV (image paths such as /opt/streamjob moved under the temporary root) and runs its
RUN commands, the same uv commands against the same lock, offline from uv's cache
(warm after ``uv sync``). Then, with the final stage's COPY and ENV, it runs the
image's commands: ``streamjob --version``, ``streamjob-operator --help``, the imports,
and a job from the image's examples directory, whose output is checked exactly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.delivery import dockerfile

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
USER = "10001"
EXAMPLES = "/opt/streamjob/examples"
# Paths the image owns; the replay moves them under its temporary root.
IMAGE_PATHS = ("/opt/streamjob", "/src")
BUILD_TOOLS = ("build-essential", "gcc", "g++", "clang", "make ", "uv ", "pip install")
DEV_ONLY = ("pytest", "mypy", "ruff", "import-linter", "kubernetes-validate", "playwright")


def problems(text: str, ignore: dockerfile.DockerIgnore, context: Path) -> list[str]:
    """What is wrong with a Dockerfile (and its build context); empty when nothing is."""
    found: list[str] = []
    parsed = dockerfile.parse(text)
    stages = parsed.stages
    if len(stages) < 2:
        return [f"not multi-stage: {len(stages)} stage(s)"]
    final = stages[-1]
    names = {s.name for s in stages if s.name}
    builders = [s for s in stages[:-1] if s.all("RUN")]
    if not builders:
        found.append("no builder stage runs anything")
    for stage in [*builders, final]:
        image, _, tag = stage.base.partition(":")
        if image != "python" or not tag.startswith("3.11-slim-bookworm"):
            found.append(f"stage {stage.name or 'final'} is FROM {stage.base}, not a pinned"
                         " python:3.11-slim-bookworm")  # fmt: skip
    if builders and builders[-1].base != final.base:
        found.append("the builder and the final stage use different images (the venv links"
                     " to the builder's interpreter)")  # fmt: skip
    users = final.all("USER")
    if not users or users[-1].args.split(":")[0] != USER:
        found.append(f"the final stage must end with USER {USER} (numeric, for runAsNonRoot)")
    elif users[-1].args not in (USER, f"{USER}:{USER}"):
        found.append(f"USER {users[-1].args}: the group must be {USER} too")
    for run in final.all("RUN"):
        for tool in BUILD_TOOLS:
            if tool in f"{run.args} ":
                found.append(f"the final stage runs {tool.strip()!r}: {run.args}")
    for copy in final.all("COPY"):
        source = copy.flags.get("from")
        if source is not None and source not in names:
            found.append(f"the final stage copies from the image {source} (build tools?)")
    copies = {tuple(c.words()) for c in final.all("COPY") if "from" not in c.flags}
    if ("examples", EXAMPLES) not in copies:
        found.append(f"the final stage does not COPY examples {EXAMPLES}")
    entrypoints = final.all("ENTRYPOINT")
    if not entrypoints or entrypoints[-1].words() != ["streamjob"]:
        found.append('ENTRYPOINT must be ["streamjob"]')
    env = final.env()
    if env.get("PYTHONUNBUFFERED") != "1":
        found.append("ENV PYTHONUNBUFFERED=1 is missing (logs would lag)")
    if env.get("HOME") != "/tmp" or final.all("WORKDIR")[-1].args != "/tmp":
        found.append("HOME and WORKDIR must be /tmp, writable with a read-only root filesystem")
    labels: dict[str, str] = {}
    for label in final.all("LABEL"):
        labels.update(label.pairs())
    for key in ("title", "description", "version", "licenses"):
        if not labels.get(f"org.opencontainers.image.{key}"):
            found.append(f"LABEL org.opencontainers.image.{key} is missing")
    runs = " ".join(run.args for stage in builders for run in stage.all("RUN"))
    for flag in ("--frozen", "--no-dev", "--no-editable"):
        if flag not in runs:
            found.append(f"the builder's uv sync lacks {flag}")
    for stage in stages:
        for copy in stage.all("COPY"):
            if "from" not in copy.flags:
                found += _context_problems(copy.words()[:-1], ignore, context)
    return found


def _context_problems(
    sources: list[str], ignore: dockerfile.DockerIgnore, context: Path
) -> list[str]:
    found = []
    for source in sources:
        if not (context / source).exists():
            found.append(f"COPY {source}: no such file in the build context")
        elif ignore.excluded(source):
            found.append(f"COPY {source}: excluded by .dockerignore")
        elif (context / source).is_dir():
            tracked = subprocess.run(
                ["git", "ls-files", source], cwd=context, capture_output=True, text=True
            ).stdout.split()
            left_out = [path for path in tracked if ignore.excluded(path)]
            if left_out:
                found.append(f"COPY {source}: .dockerignore leaves out {left_out[:3]}")
    return found


def test_the_dockerfile_passes_the_static_checks() -> None:
    assert problems(DOCKERFILE.read_text(), dockerfile.DockerIgnore.read(DOCKERIGNORE), ROOT) == []


def test_the_static_checks_fail_a_dockerfile_that_breaks_the_rules() -> None:
    broken = (
        DOCKERFILE.read_text()
        .replace("USER 10001:10001", "USER streamjob")
        .replace("COPY examples /opt/streamjob/examples", "COPY docs /opt/streamjob/examples")
        .replace("LABEL org.opencontainers.image.title", "RUN apt-get install -y gcc\nLABEL x")
    )
    ignore = dockerfile.DockerIgnore.read(DOCKERIGNORE)
    found = problems(broken, ignore, ROOT)
    assert "the final stage must end with USER 10001 (numeric, for runAsNonRoot)" in found
    assert f"the final stage does not COPY examples {EXAMPLES}" in found
    assert "COPY docs: excluded by .dockerignore" in found
    assert any("runs 'gcc'" in p for p in found), found
    assert "LABEL org.opencontainers.image.title is missing" in found
    single = "FROM python:3.11-slim-bookworm\nCOPY . /src\n"
    assert problems(single, ignore, ROOT) == ["not multi-stage: 1 stage(s)"]


def test_the_dockerignore_lets_the_sources_through_and_keeps_the_rest_out() -> None:
    ignore = dockerfile.DockerIgnore.read(DOCKERIGNORE)
    for kept in ("uv.lock", "runtime/streamjob_runtime/cli.py", "examples/keyed_count.py"):
        assert not ignore.excluded(kept), kept
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "charts", ".tools",
                    "runtime/streamjob_runtime/__pycache__/cli.cpython-311.pyc"):  # fmt: skip
        assert ignore.excluded(dropped), dropped
    # moby's semantics: last match wins, parents count, ** spans directories.
    rules = dockerfile.DockerIgnore.parse("docs\n!docs/keep.md\n**/*.log\n")
    assert rules.excluded("docs/a.md")
    assert not rules.excluded("docs/keep.md")
    assert rules.excluded("a/b/c.log")
    assert rules.excluded("c.log")
    assert not rules.excluded("docsx")


def _moved(value: str, root: Path) -> str:
    """``value`` with the image's own paths (IMAGE_PATHS) moved under ``root``."""
    parts = []
    for part in value.split(":"):
        if any(part == p or part.startswith(p + "/") for p in IMAGE_PATHS):
            part = f"{root}{part}"
        parts.append(part)
    return ":".join(parts)


def _apply_env(pairs: dict[str, str], env: dict[str, str], root: Path) -> None:
    for key, value in pairs.items():
        expanded = value.replace("${PATH}", env["PATH"]).replace("$PATH", env["PATH"])
        env[key] = _moved(expanded, root)


def _copy_from_context(words: list[str], root: Path, workdir: str) -> None:
    ignore = dockerfile.DockerIgnore.read(DOCKERIGNORE)
    *sources, dest = words
    target = Path(_moved(dest if dest.startswith("/") else f"{workdir}/{dest}", root))
    for source in sources:
        src = ROOT / source
        if src.is_dir():
            for path in src.rglob("*"):
                rel = path.relative_to(ROOT).as_posix()
                if path.is_file() and not ignore.excluded(rel):
                    out = target / path.relative_to(src)
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(path, out)
        else:
            out = target / src.name if dest.endswith("/") or target.is_dir() else target
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, out)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """The builder stage replayed, then the final stage's files and ENV: (root, env)."""
    if shutil.which("uv") is None:
        pytest.fail("uv is not on PATH: run scripts/bootstrap.sh (it installs uv)")
    root = tmp_path_factory.mktemp("image")
    parsed = dockerfile.parse(DOCKERFILE.read_text())
    builder, final = parsed.stage("builder"), parsed.stages[-1]
    host = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    env = {**host, "UV_OFFLINE": "1"}
    workdir = "/"
    for instruction in builder.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = instruction.args
            Path(_moved(workdir, root)).mkdir(parents=True, exist_ok=True)
        elif instruction.keyword == "ENV":
            _apply_env(instruction.pairs(), env, root)
        elif instruction.keyword == "COPY" and "from" not in instruction.flags:
            _copy_from_context(instruction.words(), root, workdir)
        elif instruction.keyword == "RUN" and instruction.args.startswith("apt-get"):
            # System packages (the compiler for the C extensions) come from the host here;
            # the replay is about the uv commands and what they install.
            continue
        elif instruction.keyword == "RUN":
            run_env = dict(env)
            if shutil.which("cc") is None:
                # No compiler here (the builder installs one): the wheel goes without its C
                # extensions instead of failing as STREAMJOB_NATIVE=1 makes it in the image.
                run_env.pop("STREAMJOB_NATIVE", None)
            done = subprocess.run(
                ["sh", "-c", instruction.args],
                cwd=_moved(workdir, root),
                env=run_env,
                capture_output=True,
                text=True,
                timeout=240,
            )
            assert done.returncode == 0, (
                f"RUN {instruction.args} failed ({done.returncode}): {done.stderr[-3000:]}"
                " (offline: is uv's cache warm? run `uv sync --frozen` first)"
            )
    for copy in final.all("COPY"):
        if copy.flags.get("from") == "builder":
            source, dest = copy.words()
            assert source == dest, "the venv must keep its path: its scripts name it"
            assert Path(_moved(source, root)).is_dir(), f"the builder made no {source}"
        elif "from" not in copy.flags:
            _copy_from_context(copy.words(), root, "/")
    final_env = dict(host)
    _apply_env(final.env(), final_env, root)
    return root, final_env


def _run(env: dict[str, str], *command: str) -> str:
    done = subprocess.run(
        command, env=env, cwd=env["HOME"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}: {done.stderr[-3000:]}"
    return done.stdout


def test_the_image_commands_run_from_the_installed_venv(
    image: tuple[Path, dict[str, str]],
) -> None:
    root, env = image
    venv = root / "opt/streamjob/venv"
    assert shutil.which("streamjob", path=env["PATH"]) == str(venv / "bin/streamjob")
    assert _run(env, "streamjob", "--version") == f"streamjob {VERSION}\n"
    assert _run(env, "streamjob-operator", "--help").startswith("usage: streamjob-operator")
    imported = _run(
        env,
        str(venv / "bin/python"),
        "-c",
        "import json, streamjob_operator.handlers, streamjob_operator.__main__,"
        " streamjob_runtime.cli, streamjob_runtime.jobmanager, streamjob_runtime.taskmanager,"
        " examples.clickstream, examples.keyed_count;"
        " print(json.dumps([streamjob_runtime.cli.__file__, examples.keyed_count.__file__]))",
    )
    runtime, example = json.loads(imported)
    # A wheel in the venv, not the sources (--no-editable); the examples by module name.
    assert Path(runtime).is_relative_to(venv), runtime
    assert example == f"{root}{EXAMPLES}/keyed_count.py"
    # The web UI's static files are package data: in the wheel, next to the code.
    shipped = _run(
        env,
        str(venv / "bin/python"),
        "-c",
        "from streamjob_runtime.jobmanager import rest;"
        " print(sorted(p.name for p in rest.WEB_DIR.iterdir()), rest.WEB_DIR)",
    )
    assert shipped.startswith("['app.js', 'favicon.svg', 'index.html', 'style.css'] ")
    assert Path(shipped.split()[-1]).is_relative_to(venv), shipped
    # The wheel carries the C extension built by hatch_build.py (the builder has a compiler).
    if shutil.which("cc") is not None:
        native = _run(
            env,
            str(venv / "bin/python"),
            "-c",
            "from streamjob_runtime.graph import keygroups, _keyhash;"
            " print(keygroups.NATIVE, _keyhash.__file__)",
        )
        assert native.startswith("True "), native
        assert Path(native.split()[-1]).is_relative_to(venv), native


def test_the_builder_requires_the_c_extensions_it_installs_a_compiler_for(
    tmp_path: Path,
) -> None:
    builder = dockerfile.parse(DOCKERFILE.read_text()).stage("builder")
    assert builder.env().get("STREAMJOB_NATIVE") == "1", "a failed compile ships the Python path"
    if shutil.which("uv") is None:
        pytest.fail("uv is not on PATH: run scripts/bootstrap.sh (it installs uv)")
    host = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    broken = {**host, "CC": "false", "UV_OFFLINE": "1"}  # a compiler that always fails

    def build(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["uv", "build", "--wheel", "-o", str(tmp_path), str(ROOT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )

    required = build({**broken, "STREAMJOB_NATIVE": "1"})
    assert required.returncode != 0, required.stdout
    assert "STREAMJOB_NATIVE=1 requires it" in required.stderr, required.stderr[-3000:]
    assert not list(tmp_path.glob("*.whl"))
    optional = build(broken)  # outside the image: the Python path, said on stderr
    assert optional.returncode == 0, optional.stderr[-3000:]
    assert "the Python path will run instead" in optional.stderr
    assert [p.name for p in tmp_path.glob("*.whl")] == [f"streamjob-{VERSION}-py3-none-any.whl"]


def test_the_venv_holds_exactly_the_locked_runtime_dependencies(
    image: tuple[Path, dict[str, str]],
) -> None:
    root, env = image
    listing = _run(
        env,
        str(root / "opt/streamjob/venv/bin/python"),
        "-c",
        "import json, importlib.metadata as m;"
        " print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))",
    )
    installed = {name.lower().replace("_", "-"): v for name, v in json.loads(listing).items()}
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {p["name"]: p["version"] for p in lock["package"]}
    assert {name: locked.get(name) for name in installed} == installed
    assert not set(DEV_ONLY) & installed.keys()
    assert {"kopf", "aiohttp", "pydantic", "kubernetes-asyncio"} <= installed.keys()


def test_a_job_from_the_image_examples_runs_exactly(
    image: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, env = image
    job = f"{root}{EXAMPLES}/keyed_count.py"
    args = [f"out={tmp_path / 'out'}", "events=3000", "rate=6000", "keys=16"]
    summary = _run(
        env, "streamjob", "run", "-p", "2", "-D", "execution.checkpointing.interval=200", job, *args
    )
    assert "FINISHED" in summary
    report = json.loads(
        _run(env, str(root / "opt/streamjob/venv/bin/python"), job, "--verify", *args)
    )
    assert report == {"exact": True, "lines": 3000, "keys": 16, "problems": []}
