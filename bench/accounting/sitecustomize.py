"""CPU accounting inside engine processes, for ``bench/profile.py --accounting``.

Python imports ``sitecustomize`` at startup from the path; ``bench/profile.py`` puts this
directory first on the ``PYTHONPATH`` of the engine processes it starts and names an
output directory in ``STREAMJOB_ACCOUNTING``.  Then, in a TaskManager or JobManager,
the functions of a record's path are wrapped to add up the CPU time of the thread that
runs them (``time.thread_time``), each stage's own time without the stages it calls,
and a thread writes the totals every 0.2 s to ``<dir>/<pid>.json``, with the process's
CPU time and its main thread's (the event loop's): what the stages do not explain is the
event loop, the tasks' own loops, channels and asyncio.

Wrapping costs two clock reads per call (a few hundred nanoseconds); the wrapped
functions run once per batch or frame, not per record.  Nothing here runs unless
``STREAMJOB_ACCOUNTING`` is set.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

# stage -> [(module, attribute path)] of the functions whose own CPU time it counts
STAGES: dict[str, list[tuple[str, str]]] = {
    "source": [("streamjob_runtime.operators.source", "SourceOperator.emit_next")],
    "partition (key, hash, split)": [
        ("streamjob_runtime.taskmanager.network", "RecordWriter.emit"),
        ("streamjob_runtime.graph.keygroups", "split"),
    ],
    "encode": [("streamjob_runtime.taskmanager.wire", "encode")],
    "send (frame, TLS write)": [
        ("streamjob_runtime.taskmanager.network", "RemoteChannelWriter.frame_all"),
        ("streamjob_runtime.taskmanager.network", "RemoteChannelWriter.write_held"),
    ],
    "receive (TLS read)": [("asyncio.sslproto", "SSLProtocol._do_read")],
    "decode": [("streamjob_runtime.taskmanager.wire", "decode_batch")],
    "operator and state": [("streamjob_runtime.taskmanager.task", "Task._process_batch")],
    "watermarks and timers": [("streamjob_runtime.taskmanager.task", "Task._on_watermark")],
    "sink": [("streamjob_runtime.operators.sink", "SinkOperator.process_batch")],
    "checkpoint (task, sync part)": [("streamjob_runtime.taskmanager.task", "Task._checkpoint")],
}


def _install(out_dir: str) -> None:
    import importlib

    totals: dict[str, list[float]] = {}  # stage -> [calls, own CPU seconds]
    local = threading.local()

    def wrap(stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        clock = time.thread_time
        entry = totals.setdefault(stage, [0, 0.0])

        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            stack = local.__dict__.setdefault("stack", [])
            stack.append(0.0)  # CPU time of wrapped calls made from this one
            started = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                spent = clock() - started
                inner = stack.pop()
                if stack:
                    stack[-1] += spent
                entry[0] += 1
                entry[1] += spent - inner

        return timed

    for stage, targets in STAGES.items():
        for module_name, path in targets:
            owner: Any = importlib.import_module(module_name)
            *parents, name = path.split(".")
            for parent in parents:
                owner = getattr(owner, parent)
            setattr(owner, name, wrap(stage, getattr(owner, name)))

    main_clock = time.pthread_getcpuclockid(threading.main_thread().ident or 0)
    path = os.path.join(out_dir, f"{os.getpid()}.json")

    def dump() -> None:
        while True:
            record = {
                "argv": sys.argv[1:3],
                "process_cpu_s": time.process_time(),
                "main_thread_cpu_s": time.clock_gettime(main_clock),
                "stages": {k: {"calls": v[0], "cpu_s": v[1]} for k, v in totals.items()},
            }
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump(record, f)
            os.replace(tmp, path)
            time.sleep(0.2)

    threading.Thread(target=dump, name="accounting", daemon=True).start()


if os.environ.get("STREAMJOB_ACCOUNTING") and any(
    role in sys.argv for role in ("taskmanager", "jobmanager")
):
    _install(os.environ["STREAMJOB_ACCOUNTING"])
