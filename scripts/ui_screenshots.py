"""Take the README's web UI screenshots (docs/ui-*.png) from a real local cluster.

    uv run --frozen python scripts/ui_screenshots.py [OUTPUT_DIR]

Needs Chromium (``apt-get install chromium``) and the dev dependency playwright. Starts a
JobManager and two TaskManagers, runs a small five-vertex job, kills a TaskManager once
(for the exceptions and restore views) and writes the pages as PNGs.
"""

from __future__ import annotations

import json
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import FloatRect, sync_playwright

from streamjob_runtime.local import LocalCluster

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
JOB = """
from streamjob_runtime.connectors.files import FileSink
from streamjob_runtime.connectors.generator import GeneratorSource


def build(env):
    env.enable_checkpointing(2000)
    out = env.args[0]
    clicks = env.from_source(
        GeneratorSource(lambda i: ("click", i % 50), rate=3000), name="clicks"
    ).uid("clicks").set_parallelism(1)
    orders = env.from_source(
        GeneratorSource(lambda i: ("order", i % 50), rate=800), name="orders"
    ).uid("orders").set_parallelism(1)
    (
        clicks.union(orders)
        .map(lambda e: (e[1], 1 if e[0] == "click" else 10)).uid("score").set_parallelism(2)
        .key_by(lambda e: e[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1])).uid("per-user").set_parallelism(2)
        .sink_to(FileSink(out)).uid("sink").set_parallelism(1)
    )
"""


def rest(base: str, path: str, body: object = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def wait_for(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.1)


def clip(height: float) -> FloatRect:
    """The top of the page, ``height`` pixels high."""
    return {"x": 0, "y": 0, "width": 1200, "height": height}


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs"
    work = Path(tempfile.mkdtemp(prefix="streamjob-ui-"))
    (work / "scores.py").write_text(JOB)
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with LocalCluster(work / "cluster", taskmanagers=2, slots=3, heartbeat_interval_ms=500) as c:
        base = c.rest_url
        job = rest(
            base,
            "/jobs",
            {
                "entrypoint": str(work / "scores.py"),
                "args": [str(work / "out")],
                "config": {"pipeline.name": "user-scores"},
            },
        )["jobid"]
        wait_for(lambda: rest(base, f"/jobs/{job}/checkpoints")["counts"]["completed"] >= 3)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 720})

            def shot(fragment: str, name: str, ready: str, settle_s: float = 0.0) -> None:
                """The page down to the end of its content, at most one viewport high."""
                page.goto(f"{base}/{fragment}")
                page.wait_for_selector(ready)
                time.sleep(settle_s)
                height = min(720, page.evaluate("document.body.scrollHeight") + 24)
                page.screenshot(path=str(out / f"ui-{name}.png"), clip=clip(height))

            shot("", "overview", "[data-testid=jobs-table]")
            shot(f"#/jobs/{job}", "job-graph", "text=records/s in", settle_s=2.5)
            request = rest(base, f"/jobs/{job}/savepoints", {})["request_id"]
            wait_for(
                lambda: rest(base, f"/jobs/{job}/savepoints/{request}")["status"] == "COMPLETED"
            )
            c.kill_taskmanager(1, signal.SIGKILL)
            wait_for(lambda: rest(base, f"/jobs/{job}")["restarts"] == 1)
            wait_for(lambda: rest(base, f"/jobs/{job}")["state"] == "RUNNING")
            wait_for(lambda: rest(base, f"/jobs/{job}/checkpoints")["counts"]["completed"] >= 6)
            page.goto(f"{base}/#/jobs/{job}/checkpoints")
            page.locator("[data-testid=checkpoint-row][data-status=COMPLETED]").first.click()
            page.wait_for_selector("[data-testid=subtask-table]")
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=str(out / "ui-checkpoints.png"), full_page=True, clip=clip(1240))
            shot(f"#/jobs/{job}/exceptions", "exceptions", "[data-testid=exception-row]")
            shot("#/taskmanagers", "taskmanagers", "[data-testid=taskmanagers-table]")
            browser.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
