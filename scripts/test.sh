#!/usr/bin/env bash
# Set up and run every check: lint, format, types, import layers, the test suite.
source "$(dirname "$0")/bootstrap.sh"
# etcd for the high-availability tests (they skip, saying why, when it cannot be installed).
if ! command -v etcd >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq etcd-server >/dev/null) \
        || echo "warning: could not install etcd-server; the etcd HA tests will skip"
fi
# Chromium for the web UI's browser tests (they skip, saying why, without it).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
        || echo "warning: could not install chromium; the web UI browser tests will skip"
fi
# helm and kubectl (pinned) for the chart tests, which fail rather than skip without them.
bash scripts/tools.sh || echo "error: could not fetch helm, kubectl and tansu; the chart and Kafka tests will fail"
export STREAMJOB_REQUIRE_TOOLS=1
echo "== ruff";          uv run --frozen ruff check .
echo "== ruff format";   uv run --frozen ruff format --check .
echo "== mypy --strict"; uv run --frozen mypy
echo "== import-linter"; uv run --frozen lint-imports
# STREAMJOB_TEST_WORKERS=N runs the tests in N processes (pytest-xdist, --dist worksteal);
# default 2, 0 runs them in this process. Most of the suite waits on real processes, so two
# workers on two cores cut the wall time: the whole suite took 12-13.5 min in two workers
# against about 21 min in one (on a shared 2-core machine at load 2-10, every test passing
# in each run). Workers share nothing: ports come from the OS, files from tmp_path.
workers="${STREAMJOB_TEST_WORKERS:-2}"
parallel=()
if [ "$workers" != 0 ]; then parallel=(-n "$workers" --dist worksteal); fi
echo "== pytest";        uv run --frozen pytest "${parallel[@]}" "$@"
