"""The web UI in a real browser (Chromium driven by Playwright) against a real local cluster.

One JobManager and two TaskManager processes run one real job for the whole module, and
one browser serves every test, so the module stays fast. Tests run in file order: the
later ones (a TaskManager kill, stop and cancel) change the job the earlier ones read.

Screenshots go to ``test-artifacts/web-ui/`` (git-ignored), or to the directory in
``STREAMJOB_TEST_ARTIFACTS``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from streamjob_runtime.local import LocalCluster
from tests.conftest import JOBS

playwright_sync = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("STREAMJOB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
INTERVAL_MS = 1000  # the job's checkpoint interval
REFRESH_S = 2.0  # the UI's refresh period (REFRESH_MS in app.js)
TIMEOUT_MS = 60_000  # generous: the machine may be loaded

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (scripts/test.sh does"
    " it when run as root) or set STREAMJOB_CHROMIUM",
)


def rest(cluster: LocalCluster, path: str, body: Any = None) -> Any:
    """GET (or POST ``body``) the cluster's REST API, with its token and CA."""
    request = urllib.request.Request(
        cluster.rest_url + path,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {cluster.token}"},
        method="GET" if body is None else "POST",
    )
    with urllib.request.urlopen(request, timeout=10, context=cluster.ssl_context()) as resp:
        return json.loads(resp.read())


def wait_for(what: str, condition: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.05)


class Env:
    def __init__(
        self, cluster: LocalCluster, job: str, page: Any, artifacts: Path, work: Path
    ) -> None:
        self.cluster = cluster
        self.work = work
        self.base = cluster.rest_url
        self.job = job
        self.page = page
        self.artifacts = artifacts

    def open(self, fragment: str = "") -> None:
        self.page.goto(f"{self.base}/{fragment}")

    def shot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def testid(self, name: str) -> Any:
        return self.page.get_by_test_id(name)


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    artifacts = Path(os.environ.get("STREAMJOB_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "web-ui"
    artifacts.mkdir(parents=True, exist_ok=True)
    work = tmp_path_factory.mktemp("web-ui")
    cluster = LocalCluster(
        work / "cluster",
        taskmanagers=2,
        slots=2,
        heartbeat_interval_ms=200,
        heartbeat_timeout_ms=5_000,
    )
    cluster.start()
    try:
        submission = {
            "entrypoint": str(JOBS / "keyed_sum.py"),
            "parallelism": 2,
            "args": [
                f"out={work / 'out'}",
                "events=-1",
                "rate=2000",
                f"interval={INTERVAL_MS}",
                "source_parallelism=1",
            ],
            "config": {"pipeline.name": "keyed-sum"},
        }
        job = rest(cluster, "/jobs", submission)["jobid"]
        wait_for("the job to run", lambda: rest(cluster, f"/jobs/{job}")["state"] == "RUNNING")
        with playwright_sync.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
            try:
                # The local cluster's certificate is signed by its own ephemeral CA, which
                # the browser does not know (a user sees the same warning once).
                page = browser.new_page(
                    viewport={"width": 1280, "height": 800}, ignore_https_errors=True
                )
                page.set_default_timeout(TIMEOUT_MS)
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                # Console errors too: a Content-Security-Policy violation is reported there.
                page.on(
                    "console",
                    lambda m: (
                        errors.append(m.text) if m.type == "error" and "401" not in m.text else None
                    ),
                )
                # The token, as the prompt stores it, in the tab's session storage for the
                # JobManager's origin before any of the page's scripts runs (the proxy test
                # below, on another origin, goes through the prompt itself).
                origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(cluster.rest_url))
                page.add_init_script(
                    f"if (location.origin === {json.dumps(origin)})"
                    f" sessionStorage.setItem('streamjob.token', {json.dumps(cluster.token)});"
                )
                yield Env(cluster, job, page, artifacts, work)
                assert errors == [], f"JavaScript errors in the page: {errors}"
            finally:
                browser.close()
    finally:
        cluster.stop()


def test_the_overview_page_shows_taskmanagers_slots_and_the_running_job(ui: Env) -> None:
    ui.open()
    expect = playwright_sync.expect
    expect(ui.testid("card-taskmanagers")).to_contain_text("2")
    expect(ui.testid("card-slots")).to_contain_text("/ 4")
    table = ui.testid("jobs-table")
    expect(table).to_contain_text(ui.job)
    expect(table).to_contain_text("RUNNING")
    ui.shot("overview")


def test_the_job_graph_shows_every_vertex_with_parallelism_and_live_rates(ui: Env) -> None:
    details = rest(ui.cluster, f"/jobs/{ui.job}")
    ui.open(f"#/jobs/{ui.job}")
    expect = playwright_sync.expect
    vertices = ui.page.locator("[data-testid=job-graph] [data-testid=vertex]")
    expect(vertices).to_have_count(len(details["vertices"]))
    for v in details["vertices"]:
        node = ui.page.locator(f"[data-testid=job-graph] [data-vertex='{v['id']}']")
        expect(node).to_contain_text(f"Parallelism {v['parallelism']}")
    # Edges: one path per input edge of the graph.
    edges = sum(len(v["inputs"]) for v in details["vertices"])
    assert edges >= 1
    expect(ui.page.locator("[data-testid=job-graph] path.edge")).to_have_count(edges)
    # Busy and back-pressure are rates: they appear from the second refresh on.
    expect(ui.page.locator("[data-testid=job-graph]")).to_contain_text(
        "records/s in", timeout=TIMEOUT_MS
    )
    expect(ui.page.locator("[data-testid=job-graph]")).not_to_contain_text("measuring")
    ui.shot("job-graph")


def test_a_completed_checkpoint_appears_in_the_history_within_its_interval(ui: Env) -> None:
    before = rest(ui.cluster, f"/jobs/{ui.job}/checkpoints")["history"]
    newest = max((h["id"] for h in before), default=0)
    ui.open(f"#/jobs/{ui.job}/checkpoints")
    started = time.monotonic()
    expect = playwright_sync.expect
    # The next checkpoint is due within one interval; the page shows it at its next refresh.
    budget_ms = int((INTERVAL_MS / 1000 + 2 * REFRESH_S) * 1000) + 10_000  # + slack for load
    newer = ui.page.locator(
        "[data-testid=checkpoint-row][data-status=COMPLETED][data-kind=checkpoint]"
    ).filter(has_text=str(newest + 1))
    expect(newer.first).to_be_visible(timeout=budget_ms)
    elapsed = time.monotonic() - started
    expect(ui.testid("checkpoint-config")).to_contain_text("exactly-once")
    expect(ui.testid("checkpoint-config")).to_contain_text("Unaligned")
    # The job's checkpoints are aligned: the table says so, with no in-flight data.
    expect(newer.first.locator("[data-testid=checkpoint-unaligned]")).to_have_text("aligned")
    expect(newer.first.locator("[data-testid=checkpoint-persisted]")).to_have_text("0 B")
    expect(ui.testid("latest-completed")).to_contain_text("chk-")
    # Per-subtask state: open the row; every subtask acknowledged.
    newer.first.click()
    subtasks = sum(v["parallelism"] for v in rest(ui.cluster, f"/jobs/{ui.job}")["vertices"])
    expect(ui.page.locator("[data-testid=subtask-table] tbody tr")).to_have_count(subtasks)
    ui.shot("checkpoints")
    assert elapsed < budget_ms / 1000


def test_a_savepoint_triggered_from_the_page_shows_up_completed(ui: Env) -> None:
    ui.open(f"#/jobs/{ui.job}/savepoints")
    expect = playwright_sync.expect
    ui.testid("action-savepoint").click()
    dialog = ui.page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Trigger a savepoint")
    dialog.get_by_role("button", name="Trigger savepoint").click()
    row = ui.page.locator("[data-testid=savepoint-row][data-status=COMPLETED]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("savepoint-")
    expect(ui.testid("savepoint-history")).to_contain_text("COMPLETED")
    requests = rest(ui.cluster, f"/jobs/{ui.job}/savepoints")["requests"]
    assert [r["status"] for r in requests] == ["COMPLETED"]
    ui.shot("savepoints")


def test_a_dismissed_confirmation_does_nothing(ui: Env) -> None:
    ui.open(f"#/jobs/{ui.job}")
    ui.testid("action-cancel").click()
    ui.page.locator("dialog#confirm").get_by_role("button", name="Back").click()
    time.sleep(0.5)  # nothing may happen: give a wrong request the time to arrive
    assert rest(ui.cluster, f"/jobs/{ui.job}")["state"] == "RUNNING"


def test_a_killed_taskmanager_shows_as_an_exception_and_a_restore(ui: Env) -> None:
    ui.open(f"#/jobs/{ui.job}/exceptions")
    expect = playwright_sync.expect
    expect(ui.testid("exceptions-table")).to_contain_text("Nothing yet")
    restored_before = rest(ui.cluster, f"/jobs/{ui.job}/checkpoints")["latest_restored"]
    assert restored_before is None
    ui.cluster.kill_taskmanager(0, signal.SIGKILL)
    rows = ui.page.locator("[data-testid=exception-row]")
    expect(rows.first).to_be_visible()
    expect(rows.first).to_contain_text("tm-")
    ui.shot("exceptions")
    wait_for(
        "the job to run again",
        lambda: rest(ui.cluster, f"/jobs/{ui.job}")["state"] == "RUNNING",
        timeout_s=90,
    )
    restored = rest(ui.cluster, f"/jobs/{ui.job}/checkpoints")["latest_restored"]
    assert restored is not None
    ui.open(f"#/jobs/{ui.job}/checkpoints")
    expect(ui.testid("latest-restore-kv")).to_contain_text(str(restored["path"]))
    expect(ui.testid("job-restarts")).to_have_text("1")
    ui.shot("checkpoints-after-restore")


def test_the_taskmanagers_and_configuration_pages_render(ui: Env) -> None:
    expect = playwright_sync.expect
    wait_for(
        "two TaskManagers", lambda: len(rest(ui.cluster, "/taskmanagers")["taskmanagers"]) == 2
    )
    ui.open("#/taskmanagers")
    rows = ui.page.locator("[data-testid=taskmanagers-table] tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("MiB")  # the resident memory the TaskManager reports
    expect(rows.first).to_contain_text("ago")
    ui.shot("taskmanagers")
    ui.open(f"#/jobs/{ui.job}/config")
    expect(ui.testid("job-config")).to_contain_text("keyed_sum.py")
    expect(ui.testid("job-config")).to_contain_text("fixed-delay")
    expect(ui.testid("config-options")).to_contain_text("pipeline.name")
    ui.shot("configuration")


def test_behind_a_proxy_path_the_ui_asks_for_a_token_on_401_and_sends_it(
    ui: Env, tmp_path: Path
) -> None:
    """A Kubernetes-style Service proxy path in front; the JobManager answers 401 itself."""
    prefix = "/api/v1/namespaces/ns/services/jm:8081/proxy"
    token = ui.cluster.token
    assert token is not None
    seen: list[tuple[str, str | None]] = []

    async def forward(request: web.Request) -> web.StreamResponse:
        path = request.path[len(prefix) :] or "/"
        auth = request.headers.get("Authorization")
        seen.append((path, auth))
        headers = {"Authorization": auth} if auth else {}
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                request.method,
                ui.base + path,
                params=request.query,
                data=await request.read(),
                headers=headers,
                ssl=ui.cluster.ssl_context() or True,
            ) as resp,
        ):
            return web.Response(
                body=await resp.read(), status=resp.status, content_type=resp.content_type
            )

    proxy, stop = _serve_in_thread(prefix, forward)
    try:
        # Another origin: its session storage holds no token yet.
        ui.page.goto(f"{proxy}{prefix}/")
        expect = playwright_sync.expect
        prompt = ui.page.locator("dialog#token")
        expect(prompt).to_be_visible()
        ui.shot("token-prompt")
        ui.page.fill("#token-input", token)
        ui.page.click("#token-ok")
        expect(ui.testid("card-taskmanagers")).to_contain_text("2")
        assert ui.page.evaluate("sessionStorage.getItem('streamjob.token')") == token
        api_calls = [(p, a) for p, a in seen if p in ("/overview", "/jobs")]
        assert api_calls[0][1] is None  # the first call went without a token and got 401
        assert (("/overview", f"Bearer {token}")) in api_calls
        assert ("/web/app.js", None) in seen  # static files need no token
    finally:
        stop()


def _serve_in_thread(
    prefix: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> tuple[str, Callable[[], None]]:
    """Serve ``handler`` for every path under ``prefix`` from a thread: (base URL, stop)."""

    ready: list[str] = []
    loop = asyncio.new_event_loop()
    runner_box: list[web.AppRunner] = []

    async def start() -> None:
        app = web.Application()
        app.router.add_route("*", prefix + "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runner_box.append(runner)
        port = runner.addresses[0][1]
        ready.append(f"http://127.0.0.1:{port}")

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for("the proxy to listen", lambda: bool(ready), timeout_s=10)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(runner_box[0].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    return ready[0], stop


def test_stop_with_savepoint_and_cancel_from_the_page_end_the_jobs(ui: Env) -> None:
    expect = playwright_sync.expect
    ui.open(f"#/jobs/{ui.job}")
    ui.testid("action-stop").click()
    ui.page.locator("dialog#confirm").get_by_role("button", name="Stop job").click()
    expect(ui.testid("job-name")).to_contain_text("FINISHED", timeout=TIMEOUT_MS)
    requests = rest(ui.cluster, f"/jobs/{ui.job}/savepoints")["requests"]
    assert requests[0]["operation"] == "stop"
    assert requests[0]["status"] == "COMPLETED"
    # A second job, cancelled from its page.
    submission = {
        "entrypoint": str(JOBS / "keyed_sum.py"),
        "parallelism": 1,
        "args": [f"out={ui.work / 'cancel-out'}", "events=-1", "rate=500"],
    }
    other = rest(ui.cluster, "/jobs", submission)["jobid"]
    wait_for(
        "the second job to run", lambda: rest(ui.cluster, f"/jobs/{other}")["state"] == "RUNNING"
    )
    ui.open(f"#/jobs/{other}")
    ui.testid("action-cancel").click()
    ui.page.locator("dialog#confirm").get_by_role("button", name="Cancel job").click()
    expect(ui.testid("job-name")).to_contain_text("CANCELED", timeout=TIMEOUT_MS)
    ui.open()
    expect(ui.testid("card-finished")).to_contain_text("1")
    expect(ui.testid("card-canceled")).to_contain_text("1")
