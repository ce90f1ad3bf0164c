"""Blocking work in a worker thread, from an event loop that keeps the GIL busy.

A TaskManager's event loop runs records without pause, and CPython's GIL then
starves every other thread of the process: a thread waiting for the GIL asks the
holder to drop it only when no hand-over happened within the switch interval
(5 ms), but the loop releases and retakes the GIL itself at every iteration (its
``epoll_wait(0)``, socket reads and writes) and retakes it before the waiting
thread wakes up, so the request is never made.  Measured here with
``asyncio.to_thread`` from a loop as busy as a TaskManager's: fsyncing a file and
its directory (open, fsync, close each) took 5 to 16 s, where it takes under 1 ms
on its own; a checkpoint's asynchronous part (state file fsyncs) took 0.15 to 5.4 s
at parallelism 1.

:func:`to_thread` runs the call as :func:`asyncio.to_thread` does and, while any
such call is pending on the loop, makes the loop step aside every
:data:`NUDGE_EVERY_S` for :data:`NUDGE_S` (a real sleep, not the zero-timeout
poll that the waiting thread loses), long enough for a thread woken by the
release to take the GIL.  Every thread of the process gains, including those
that the call itself relies on (an object store client's I/O thread).  The
price is at most ``NUDGE_S / NUDGE_EVERY_S`` of the loop's time, and only while
work is pending: the same fsyncs take about 10 ms.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

NUDGE_EVERY_S = 0.001
NUDGE_S = 0.00005


class _Nudger:
    """The pending calls of one loop and the timer that steps aside for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending = 0
        self.timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self.pending += 1
        if self.timer is None:
            self.timer = self.loop.call_later(NUDGE_EVERY_S, self.nudge)

    def done(self) -> None:
        self.pending -= 1
        if self.pending == 0 and self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def nudge(self) -> None:
        time.sleep(NUDGE_S)  # releases the GIL long enough for a woken thread to take it
        self.timer = self.loop.call_later(NUDGE_EVERY_S, self.nudge)


_nudgers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Nudger] = (
    weakref.WeakKeyDictionary()
)


async def to_thread(fn: Callable[..., T], /, *args: object) -> T:
    """``fn(*args)`` in the loop's default executor, as :func:`asyncio.to_thread`, with the
    loop stepping aside until it returns so that the thread gets the GIL (module docstring)."""
    loop = asyncio.get_running_loop()
    nudger = _nudgers.get(loop)
    if nudger is None:
        nudger = _nudgers[loop] = _Nudger(loop)
    nudger.start()
    try:
        return await asyncio.to_thread(fn, *args)
    finally:
        nudger.done()
