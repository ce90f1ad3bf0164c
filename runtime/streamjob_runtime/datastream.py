"""The DataStream API a job's ``build(env)`` uses (names follow Flink's).

Example::

    def build(env: StreamExecutionEnvironment) -> None:
        env.enable_checkpointing(1000)
        (env.from_source(GeneratorSource(make_event, count=100_000), strategy)
            .key_by(lambda e: e["user"])
            .window(TumblingEventTimeWindows.of(10_000))
            .aggregate(Count()).uid("counts")
            .sink_to(FileSink("out")).uid("sink"))

Every operator gets a stable uid: the one given with ``.uid(...)``, or
``<kind>-<n>`` (the n-th operator of that kind in build order).  State in
checkpoints and savepoints is addressed by uid, so give explicit uids to
stateful operators of jobs you will upgrade.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from streamjob_runtime import config, functions, windows
from streamjob_runtime.graph import jobgraph
from streamjob_runtime.operators import basic, keyed, sink, source, window


class StreamExecutionEnvironment:
    def __init__(self, job_config: config.JobConfig | None = None) -> None:
        self.config = job_config or config.JobConfig()
        self.transformations: list[jobgraph.Transformation] = []
        self._kind_counts: dict[str, int] = {}
        self.args: list[str] = []

    # -- settings ---------------------------------------------------------------------------

    def _replace(self, **fields: Any) -> None:
        self.config = msgspec.structs.replace(self.config, **fields)

    def set_parallelism(self, parallelism: int) -> StreamExecutionEnvironment:
        self._replace(parallelism=parallelism)
        return self

    def set_max_parallelism(self, max_parallelism: int) -> StreamExecutionEnvironment:
        self._replace(max_parallelism=max_parallelism)
        return self

    @property
    def parallelism(self) -> int:
        return self.config.parallelism

    def enable_checkpointing(
        self,
        interval_ms: int,
        mode: config.CheckpointingMode | str = config.CheckpointingMode.EXACTLY_ONCE,
        **options: Any,
    ) -> StreamExecutionEnvironment:
        """Periodic checkpoints; ``options`` are :class:`config.CheckpointConfig` fields."""
        checkpointing = msgspec.structs.replace(
            self.config.checkpointing,
            interval_ms=interval_ms,
            mode=config.CheckpointingMode(mode),
            **options,
        )
        self._replace(checkpointing=checkpointing)
        return self

    def set_restart_strategy(
        self, strategy: config.RestartStrategyConfig
    ) -> StreamExecutionEnvironment:
        self._replace(restart_strategy=strategy)
        return self

    # -- graph ------------------------------------------------------------------------------

    def _add(
        self,
        kind: str,
        factory: Callable[[], Any],
        inputs: list[jobgraph.Edge],
        name: str | None = None,
    ) -> jobgraph.Transformation:
        n = self._kind_counts[kind] = self._kind_counts.get(kind, 0) + 1
        t = jobgraph.Transformation(
            id=len(self.transformations),
            kind=kind,
            uid=f"{kind}-{n}",
            name=name or f"{kind}-{n}",
            factory=factory,
            inputs=inputs,
        )
        self.transformations.append(t)
        return t

    def from_source(
        self,
        src: source.Source,
        watermark_strategy: windows.WatermarkStrategy | None = None,
        name: str | None = None,
    ) -> DataStream:
        t = self._add("source", lambda: source.SourceOperator(src, watermark_strategy), [], name)
        return DataStream(self, t)

    def job_graph(self) -> jobgraph.JobGraph:
        return jobgraph.build(
            self.transformations, self.config.parallelism, self.config.max_parallelism
        )


class DataStream:
    def __init__(
        self,
        env: StreamExecutionEnvironment,
        transformation: jobgraph.Transformation,
        partitioning: jobgraph.Partitioning = jobgraph.FORWARD,
    ) -> None:
        self.env = env
        self.transformation = transformation
        self._partitioning = partitioning

    # -- attributes of the last operator --------------------------------------------------

    def uid(self, uid: str) -> DataStream:
        if not uid or "/" in uid or uid.startswith("."):
            raise ValueError(f"uid {uid!r} must be non-empty, without '/', not starting with '.'")
        self.transformation.uid = uid
        self.transformation.uid_given = True
        return self

    def name(self, name: str) -> DataStream:
        self.transformation.name = name
        return self

    def set_parallelism(self, parallelism: int) -> DataStream:
        if parallelism < 1:
            raise ValueError(f"parallelism must be >= 1, got {parallelism}")
        self.transformation.parallelism = parallelism
        return self

    # -- transformations ------------------------------------------------------------------

    def _then(self, kind: str, factory: Callable[[], Any]) -> DataStream:
        edge = jobgraph.Edge(self.transformation, self._partitioning)
        return DataStream(self.env, self.env._add(kind, factory, [edge]))

    def map(self, fn: Callable[[Any], Any]) -> DataStream:
        return self._then("map", lambda: basic.MapOperator(fn))

    def filter(self, fn: Callable[[Any], bool]) -> DataStream:
        return self._then("filter", lambda: basic.FilterOperator(fn))

    def flat_map(self, fn: Callable[[Any], Iterable[Any]]) -> DataStream:
        return self._then("flat_map", lambda: basic.FlatMapOperator(fn))

    def rebalance(self) -> DataStream:
        return DataStream(self.env, self.transformation, jobgraph.REBALANCE)

    def key_by(self, key_selector: functions.KeySelector) -> KeyedStream:
        return KeyedStream(self.env, self.transformation, key_selector)

    def union(self, *others: DataStream) -> DataStream:
        edges = [jobgraph.Edge(s.transformation, s._partitioning) for s in (self, *others)]
        return DataStream(
            self.env, self.env._add("union", lambda: basic.MapOperator(_identity), edges)
        )

    def sink_to(self, target: sink.Sink) -> DataStream:
        return self._then("sink", lambda: sink.SinkOperator(target))


def _identity(value: Any) -> Any:
    return value


class KeyedStream(DataStream):
    def __init__(
        self,
        env: StreamExecutionEnvironment,
        transformation: jobgraph.Transformation,
        key_selector: functions.KeySelector,
    ) -> None:
        key_selector = functions.specialize_key_selector(key_selector)
        super().__init__(
            env, transformation, jobgraph.Partitioning(jobgraph.PartitionKind.HASH, key_selector)
        )
        self.key_selector = key_selector

    def reduce(self, fn: Callable[[Any, Any], Any]) -> DataStream:
        key = self.key_selector
        return self._then("reduce", lambda: keyed.ReduceOperator(key, fn))

    def aggregate(self, agg: functions.AggregateFunction[Any, Any, Any]) -> DataStream:
        key = self.key_selector
        return self._then("aggregate", lambda: keyed.AggregateOperator(key, agg))

    def process(self, fn: functions.KeyedProcessFunction) -> DataStream:
        key = self.key_selector
        return self._then("process", lambda: keyed.ProcessOperator(key, fn))

    def window(self, assigner: windows.WindowAssigner) -> WindowedStream:
        return WindowedStream(self, assigner)


class WindowedStream:
    def __init__(self, stream: KeyedStream, assigner: windows.WindowAssigner) -> None:
        self.stream = stream
        self.assigner = assigner

    def aggregate(
        self,
        agg: functions.AggregateFunction[Any, Any, Any],
        window_function: window.WindowFunction | None = None,
    ) -> DataStream:
        """Aggregate each key's window.

        ``window_function(key, window, result)`` shapes the output.
        """
        key, assigner = self.stream.key_selector, self.assigner
        return self.stream._then(
            "window", lambda: window.WindowOperator(key, assigner, agg, window_function)
        )

    def reduce(
        self,
        fn: Callable[[Any, Any], Any],
        window_function: window.WindowFunction | None = None,
    ) -> DataStream:
        return self.aggregate(window.ReduceAggregate(fn), window_function)
