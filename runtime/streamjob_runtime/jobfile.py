"""Loading a job: a Python file or module with a ``build(env)`` function.

The JobManager loads the job to build its graph, and every TaskManager loads
the same job to run its tasks (user functions never travel over the wire), so
the job must be importable at the same path or module name in every process.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from streamjob_runtime import config, datastream, security
from streamjob_runtime.graph import jobgraph


class JobFileError(ValueError):
    """The job cannot be loaded; the message says what to fix."""


class EntrypointNotAllowed(JobFileError):
    """The entrypoint lies outside the allowed job roots (HTTP 403)."""


def is_path(entrypoint: str) -> bool:
    """A file path (as opposed to a module name)."""
    return entrypoint.endswith(".py") or os.sep in entrypoint


def check_allowed(entrypoint: str, job_roots: Sequence[str] | None) -> None:
    """Refuse a job file outside ``job_roots`` (None: any file), and a module name that
    is not a dotted Python identifier.

    Module names resolve on the process's own Python path (the installed packages
    and the image's job directories), so they name code already on the node.
    """
    if not is_path(entrypoint):
        if not all(part.isidentifier() for part in entrypoint.split(".")):
            raise JobFileError(
                f"job {entrypoint!r} is neither a .py path nor a module name (dotted"
                " identifiers); give one or the other"
            )
        return
    if job_roots is None or security.within(entrypoint, job_roots):
        return
    roots = ", ".join(job_roots) or "none"
    raise EntrypointNotAllowed(
        f"job file {entrypoint} is outside the allowed job roots ({roots}); put it in one"
        " of them, give a module name, or start the JobManager and TaskManagers with"
        " --job-roots naming its directory"
    )


def _import(entrypoint: str) -> ModuleType:
    if is_path(entrypoint):
        path = os.path.abspath(entrypoint)
        if not os.path.isfile(path):
            raise JobFileError(f"job file {entrypoint} does not exist; check the path")
        digest = hashlib.sha1(path.encode()).hexdigest()[:12]
        name = f"streamjob_job_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise JobFileError(f"job file {entrypoint} cannot be imported as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as e:
            raise JobFileError(
                f"job file {entrypoint} has a syntax error at line {e.lineno}: {e.msg};"
                " fix it and submit again"
            ) from None
        except Exception as e:
            raise JobFileError(
                f"importing job file {entrypoint} failed: {type(e).__name__}: {e}\n"
                + "".join(traceback.format_exception(e)[-3:])
            ) from None
        return module
    try:
        return importlib.import_module(entrypoint)
    except ModuleNotFoundError as e:
        raise JobFileError(
            f"job module {entrypoint!r} cannot be imported ({e}); give a .py path or a module"
            " on the Python path"
        ) from None
    except SyntaxError as e:
        raise JobFileError(
            f"job module {entrypoint} has a syntax error in {e.filename} at line {e.lineno}:"
            f" {e.msg}"
        ) from None


def load(
    entrypoint: str, args: list[str], job_config: config.JobConfig
) -> tuple[datastream.StreamExecutionEnvironment, jobgraph.JobGraph]:
    """Import the job, run its ``build(env)`` and return the env and the job graph."""
    module = _import(entrypoint)
    build = getattr(module, "build", None)
    if not callable(build):
        raise JobFileError(
            f"job {entrypoint} defines no build(env) function; add"
            " `def build(env): ...` that creates sources, operators and sinks on env"
        )
    env = datastream.StreamExecutionEnvironment(job_config)
    env.args = list(args)
    try:
        build(env)
    except Exception as e:
        raise JobFileError(
            f"build(env) of job {entrypoint} raised {type(e).__name__}: {e}\n"
            + "".join(traceback.format_exception(e)[-3:])
        ) from None
    try:
        env.config.validate()
        graph = env.job_graph()
    except (config.ConfigError, jobgraph.GraphError) as e:
        raise JobFileError(f"job {entrypoint}: {e}") from None
    return env, graph
