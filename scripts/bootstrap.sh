# Sourced by the other scripts: make `uv` available and sync the locked environment.
# Works on a fresh Debian 12 with Python 3.11 (pip is installed from apt when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$HOME/.local/bin:$PATH"
if ! command -v uv >/dev/null 2>&1; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then
            apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null
        else
            echo "pip is missing: install python3-pip (sudo apt-get install python3-pip)" >&2
            exit 2
        fi
    fi
    python3 -m pip install -q --user uv 2>/dev/null \
        || python3 -m pip install -q --user --break-system-packages uv 2>/dev/null \
        || python3 -m pip install -q uv
fi
# A C compiler and Python's headers build the runtime's C extensions (hatch_build.py); without
# them the same code runs in Python, slower (bench/keyed_count.py prints which one ran).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    build=()
    command -v cc >/dev/null 2>&1 || build+=(gcc libc6-dev)
    python3 -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
        || build+=(python3-dev)
    if [ ${#build[@]} -gt 0 ]; then
        (apt-get update -qq && apt-get install -y -qq "${build[@]}" >/dev/null) \
            || echo "warning: could not install ${build[*]}; the runtime runs without its C extensions"
    fi
fi
uv sync --frozen --quiet
