"""Free TCP ports for the processes a test starts."""

from __future__ import annotations

import socket
import threading

_handed_out: set[int] = set()
_lock = threading.Lock()


def free_port() -> int:
    """A local port nothing listens on now that this test process has not handed out before.

    The port is free only until someone binds it: the operating system may give a port it
    just released to the next caller, so two processes a test starts one after the other
    (an operator, then a pod the emulator's kubelet starts meanwhile) could both be told to
    listen on it. Remembering what was handed out rules that out within the process.
    """
    with _lock:
        while True:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
