"""Shared by the etcd and Kubernetes HA tests: how long a cut-off leader takes to step down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from streamjob_runtime.ha import services


async def seconds_to_step_down(
    elector: services.LeaderElector, cut: Callable[[], None], heal: Callable[[], None]
) -> float:
    """Elect ``elector``, let it renew once, ``cut`` it off, and time its revocation."""
    elected = asyncio.Event()
    revoked: list[float] = []

    async def on_elected(epoch: int) -> None:
        elected.set()

    async def on_revoked(reason: str) -> None:
        revoked.append(time.monotonic())

    run = asyncio.create_task(elector.run(on_elected, on_revoked))
    await elected.wait()
    await asyncio.sleep(0.6)  # at least one renewal succeeds first
    cut_at = time.monotonic()
    cut()
    try:
        await asyncio.wait_for(run, 10)
    finally:
        heal()
    assert revoked, "the elector returned without revoking"
    return revoked[0] - cut_at
