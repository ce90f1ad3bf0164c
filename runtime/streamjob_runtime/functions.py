"""User function types: what a job's ``build`` passes to the DataStream API."""

from __future__ import annotations

import abc
import dis
import inspect
import operator
import time
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from streamjob_runtime.state import ttl as ttl_module
from streamjob_runtime.state import views

IN = TypeVar("IN")
OUT = TypeVar("OUT")
ACC = TypeVar("ACC")

KeySelector = Callable[[Any], Any]
_STAR_ARGS = inspect.CO_VARARGS | inspect.CO_VARKEYWORDS


def specialize_key_selector(selector: KeySelector) -> KeySelector:
    """``selector``, or an equivalent built-in getter when it is a function whose whole
    body is ``return arg[constant]`` or ``return arg.name`` (``lambda e: e[0]``,
    ``lambda e: e["user"]``, ``lambda e: e.user``).

    A key selector runs once per record on each side of a keyed shuffle (to partition,
    then to scope the state); ``operator.itemgetter``/``attrgetter`` do the same lookup
    without a Python frame, about 20 ns less per call.  They raise what the function
    would (the same ``__getitem__``/``__getattr__`` runs); only the traceback lacks
    the function's line.  Anything else is returned as it is.
    """
    if type(selector) is not types.FunctionType:
        return selector
    code = selector.__code__
    if code.co_argcount != 1 or code.co_kwonlyargcount or code.co_flags & _STAR_ARGS:
        return selector
    ops = [
        i
        for i in dis.get_instructions(selector)
        if i.opname not in ("RESUME", "NOP", "CACHE", "COPY_FREE_VARS")
    ]
    names = [i.opname for i in ops]
    if not ops or ops[0].opname != "LOAD_FAST" or ops[0].arg != 0:
        return selector
    if names == ["LOAD_FAST", "LOAD_CONST", "BINARY_SUBSCR", "RETURN_VALUE"]:
        return operator.itemgetter(ops[1].argval)
    if names == ["LOAD_FAST", "LOAD_ATTR", "RETURN_VALUE"] and isinstance(ops[1].argval, str):
        return operator.attrgetter(ops[1].argval)
    return selector


class AggregateFunction(abc.ABC, Generic[IN, ACC, OUT]):
    """Flink's ``AggregateFunction``: incremental aggregation into an accumulator."""

    @abc.abstractmethod
    def create_accumulator(self) -> ACC: ...

    @abc.abstractmethod
    def add(self, value: IN, accumulator: ACC) -> ACC: ...

    @abc.abstractmethod
    def get_result(self, accumulator: ACC) -> OUT: ...


@dataclass(frozen=True)
class TimeWindow:
    """``[start, end)`` in event-time milliseconds."""

    start: int
    end: int

    def max_timestamp(self) -> int:
        return self.end - 1


class TimerService:
    """What a keyed process function sees of time (Flink's ``TimerService``)."""

    def __init__(
        self,
        backend: views.KeyedStateBackend,
        event_timers: views.TimerQueue,
        processing_timers: views.TimerQueue,
    ) -> None:
        self._backend = backend
        self._event = event_timers
        self._processing = processing_timers
        self.watermark = -(2**63)

    def current_watermark(self) -> int:
        return self.watermark

    def current_processing_time(self) -> int:
        return int(time.time() * 1000)

    def register_event_time_timer(self, timestamp: int) -> None:
        self._event.register(self._backend.current_key, timestamp)

    def delete_event_time_timer(self, timestamp: int) -> None:
        self._event.delete(self._backend.current_key, timestamp)

    def register_processing_time_timer(self, timestamp: int) -> None:
        self._processing.register(self._backend.current_key, timestamp)

    def delete_processing_time_timer(self, timestamp: int) -> None:
        self._processing.delete(self._backend.current_key, timestamp)


class KeyedContext:
    """Passed to :class:`KeyedProcessFunction` calls: current key, time, state."""

    def __init__(self, backend: views.KeyedStateBackend, timers: TimerService) -> None:
        self._backend = backend
        self.timer_service = timers
        self.timestamp: int | None = None
        # The processing-time clock of state TTL (replaceable in tests, at any time).
        self.clock: ttl_module.Clock = ttl_module.processing_time

    def _now(self) -> int:
        return self.clock()

    @property
    def current_key(self) -> Any:
        return self._backend.current_key

    def value_state(
        self, name: str, default: Any = None, ttl: ttl_module.StateTtlConfig | None = None
    ) -> views.ValueState[Any]:
        """The value state ``name``; ``ttl`` gives its entries a time-to-live."""
        if ttl is None:
            return views.ValueState(self._backend, name, default)
        return views.TtlValueState(self._backend, name, default, ttl, self._now)

    def list_state(
        self, name: str, ttl: ttl_module.StateTtlConfig | None = None
    ) -> views.ListState[Any]:
        if ttl is None:
            return views.ListState(self._backend, name)
        return views.TtlListState(self._backend, name, ttl, self._now)

    def map_state(
        self, name: str, ttl: ttl_module.StateTtlConfig | None = None
    ) -> views.MapState[Any, Any]:
        return views.MapState(self._backend, name, ttl, self._now)


class KeyedProcessFunction(abc.ABC):
    """Flink's ``KeyedProcessFunction``.

    ``open`` receives the context once, to create state views; ``process_element``
    and ``on_timer`` return (or yield) the records to emit.  State must be
    picklable: it is serialised at every checkpoint.
    """

    def open(self, ctx: KeyedContext) -> None:  # noqa: B027 - optional hook
        """Create state views here."""

    @abc.abstractmethod
    def process_element(self, value: Any, ctx: KeyedContext) -> Iterable[Any] | None: ...

    def on_timer(self, timestamp: int, ctx: KeyedContext) -> Iterable[Any] | None:
        return None
