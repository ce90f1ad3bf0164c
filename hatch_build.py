"""Builds the runtime's optional C extensions when the package is built (hatchling hook).

Each extension is an accelerator whose module has a Python twin that gives the same
results (``graph._keyhash`` for ``graph.keygroups``, ``taskmanager._plainbatch`` for
``taskmanager.wire``): without a C compiler,
or with ``STREAMJOB_NATIVE=0``, the package builds without them and runs in pure
Python. A failed compile is reported on stderr and does not fail the build, unless
``STREAMJOB_NATIVE=1`` says the extensions are required (the image's builder stage,
which installs a compiler for them: a failed compile must not ship the Python path).

The compile uses the interpreter's own ``sysconfig`` settings (compiler, flags, the
linker command for extension modules), as setuptools does. An editable install keeps
the built module beside its source; a wheel carries it (and so gets a platform tag).
uv rebuilds the editable install when a C source changes (``tool.uv.cache-keys``).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

# The C extensions: their modules (a source is runtime/<module>.c).
EXTENSIONS = ["streamjob_runtime/graph/_keyhash", "streamjob_runtime/taskmanager/_plainbatch"]


def compile_extension(source: Path, output: Path) -> str | None:
    """Compile ``source`` into the extension module ``output``; None, or why it failed."""
    config = sysconfig.get_config_vars()

    def setting(name: str, default: str = "") -> list[str]:
        # As setuptools: CC, CFLAGS and LDSHARED in the environment override the
        # interpreter's own settings.
        return shlex.split(os.environ.get(name) or config.get(name) or default)

    cc = setting("CC", "cc")
    cflags = setting("CFLAGS") + setting("CCSHARED")
    ldshared = setting("LDSHARED", "cc -shared")
    include = sysconfig.get_paths()["include"]
    # Linked beside its destination (the temporary directory may be another file system),
    # then renamed: never a half-written module where Python imports it.
    built = output.with_name(output.name + ".tmp")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            obj = Path(tmp) / (source.stem + ".o")
            for command in (
                [*cc, *cflags, "-I", include, "-c", str(source), "-o", str(obj)],
                [*ldshared, str(obj), "-o", str(built)],
            ):
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
                except (OSError, subprocess.TimeoutExpired) as e:
                    return f"{command[0]}: {e}"
                if done.returncode != 0:
                    return f"{shlex.join(command)} exited {done.returncode}: {done.stderr[-2000:]}"
            os.replace(built, output)
    except OSError as e:
        return f"{output}: {e}"
    finally:
        built.unlink(missing_ok=True)
    return None


class NativeExtensionsHook(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        setting = os.environ.get("STREAMJOB_NATIVE")
        if self.target_name != "wheel" or setting == "0":
            return
        suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
        root = Path(self.root)
        built = {}
        for module in EXTENSIONS:
            output = root / "runtime" / (module + suffix)
            failure = compile_extension(root / "runtime" / (module + ".c"), output)
            if failure is None:
                built[str(output)] = module + suffix
            elif setting == "1":
                raise RuntimeError(
                    f"streamjob: the C extension {module} was not built and STREAMJOB_NATIVE=1"
                    f" requires it (install a C compiler and Python's headers): {failure}"
                )
            else:
                print(
                    f"streamjob: the C extension {module} was not built, the Python path"
                    f" will run instead: {failure}",
                    file=sys.stderr,
                )
        if not built:
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":  # an editable install imports the module from the source tree
            build_data["force_include"].update(built)
