#!/usr/bin/env bash
# Set up and run the demo: exactly-once clickstream counts through a TaskManager SIGKILL.
source "$(dirname "$0")/bootstrap.sh"
exec uv run --frozen python examples/demo.py "$@"
