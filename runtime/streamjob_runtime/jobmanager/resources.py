"""ResourceManager: registered TaskManagers and their slots."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from streamjob_runtime import logs
from streamjob_runtime.rpc import framing, messages

log = logging.getLogger(__name__)


class SlotTimeoutError(RuntimeError):
    pass


@dataclass(eq=False)
class TaskManagerInfo:
    tm_id: str
    host: str
    data_port: int
    slots: int
    pid: int
    writer: asyncio.StreamWriter
    last_heartbeat: float = field(default_factory=time.monotonic)
    rss_bytes: int | None = None  # as the TaskManager last reported it
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class Slot:
    taskmanager: TaskManagerInfo
    index: int


class ResourceManager:
    def __init__(self) -> None:
        self.taskmanagers: dict[str, TaskManagerInfo] = {}
        self.allocated: dict[str, dict[str, int]] = {}  # job id -> tm id -> slots
        self.changed = asyncio.Condition()

    def free_slots(self, tm: TaskManagerInfo) -> int:
        used = sum(per_job.get(tm.tm_id, 0) for per_job in self.allocated.values())
        return tm.slots - used

    @property
    def slots_total(self) -> int:
        return sum(tm.slots for tm in self.taskmanagers.values())

    @property
    def slots_available(self) -> int:
        return sum(self.free_slots(tm) for tm in self.taskmanagers.values())

    async def register(self, tm: TaskManagerInfo) -> None:
        self.taskmanagers[tm.tm_id] = tm
        logs.event(
            log,
            "taskmanager_registered",
            tm_id=tm.tm_id,
            slots=tm.slots,
            pid=tm.pid,
            address=f"{tm.host}:{tm.data_port}",
        )
        async with self.changed:
            self.changed.notify_all()

    async def unregister(self, tm_id: str, reason: str) -> TaskManagerInfo | None:
        tm = self.taskmanagers.pop(tm_id, None)
        if tm is None:
            return None
        for per_job in self.allocated.values():
            per_job.pop(tm_id, None)
        logs.event(log, "taskmanager_lost", logging.WARNING, tm_id=tm_id, pid=tm.pid, reason=reason)
        tm.writer.close()
        async with self.changed:
            self.changed.notify_all()
        return tm

    async def allocate(self, job_id: str, count: int, timeout_s: float) -> list[Slot]:
        """Reserve ``count`` slots, spread round-robin over TaskManagers; wait for them."""

        async def wait() -> list[Slot]:
            async with self.changed:
                while self.slots_available < count:
                    await self.changed.wait()
            free = {tm.tm_id: self.free_slots(tm) for tm in self.taskmanagers.values()}
            slots: list[Slot] = []
            taken: dict[str, int] = {}
            while len(slots) < count:
                for tm in sorted(self.taskmanagers.values(), key=lambda t: t.tm_id):
                    if len(slots) < count and free[tm.tm_id] > taken.get(tm.tm_id, 0):
                        slots.append(Slot(tm, taken.get(tm.tm_id, 0)))
                        taken[tm.tm_id] = taken.get(tm.tm_id, 0) + 1
            self.allocated[job_id] = taken
            return slots

        try:
            async with asyncio.timeout(timeout_s):
                return await wait()
        except TimeoutError:
            raise SlotTimeoutError(
                f"could not get {count} slots within {timeout_s:.0f} s"
                f" ({self.slots_available} free of {self.slots_total} on"
                f" {len(self.taskmanagers)} TaskManagers); start more TaskManagers or lower"
                " the parallelism"
            ) from None

    async def release(self, job_id: str) -> None:
        self.allocated.pop(job_id, None)
        async with self.changed:
            self.changed.notify_all()

    async def send(self, tm_id: str, message: messages.Message) -> bool:
        tm = self.taskmanagers.get(tm_id)
        if tm is None:
            return False
        async with tm.send_lock:
            try:
                framing.write_frame(tm.writer, messages.encode(message))
                await tm.writer.drain()
            except ConnectionError:
                return False
        return True

    async def close(self) -> None:
        for tm in list(self.taskmanagers.values()):
            with contextlib.suppress(Exception):
                tm.writer.close()
