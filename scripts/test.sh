#!/usr/bin/env bash
# Set up and run every check: lint, format, types, import layers, the test suite.
source "$(dirname "$0")/bootstrap.sh"
echo "== ruff";          uv run --frozen ruff check .
echo "== ruff format";   uv run --frozen ruff format --check .
echo "== mypy --strict"; uv run --frozen mypy
echo "== import-linter"; uv run --frozen lint-imports
echo "== pytest";        uv run --frozen pytest "$@"
