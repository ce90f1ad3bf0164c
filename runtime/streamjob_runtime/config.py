"""Job and cluster settings.

Settings are frozen msgspec structs: they travel from the client to the
JobManager and on to every TaskManager inside deployment messages, so they must
be plain data.  Names follow Flink's options where the concept is Flink's
(``execution.checkpointing.interval`` is :attr:`CheckpointConfig.interval_ms`).
"""

from __future__ import annotations

import enum
import re
import urllib.parse
from collections.abc import Mapping

import msgspec


class ConfigError(ValueError):
    """A setting is invalid; the message says which one and what to use instead."""


KIB = 1024
MIB = 1024 * KIB
_UNITS = {
    "": 1,
    "b": 1,
    "kb": KIB,
    "k": KIB,
    "mb": MIB,
    "m": MIB,
    "gb": 1024 * MIB,
    "g": 1024 * MIB,
}


class MemorySize(int):
    """Flink's memory size syntax: ``64mb``, ``8 MB``, ``4kb``, ``1gb`` or plain bytes."""

    def __new__(cls, raw: str | int) -> MemorySize:
        if isinstance(raw, int):
            return super().__new__(cls, raw)
        match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", raw)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ValueError(raw)
        return super().__new__(cls, int(match.group(1)) * _UNITS[match.group(2).lower()])


class CheckpointingMode(enum.StrEnum):
    EXACTLY_ONCE = "exactly-once"
    AT_LEAST_ONCE = "at-least-once"


class CheckpointConfig(msgspec.Struct, frozen=True):
    """Flink's ``execution.checkpointing.*`` options."""

    interval_ms: int = 0  # 0 disables periodic checkpoints
    mode: CheckpointingMode = CheckpointingMode.EXACTLY_ONCE
    timeout_ms: int = 600_000
    min_pause_ms: int = 0
    max_concurrent: int = 1
    tolerable_failures: int = 0
    retained: int = 1
    # execution.checkpointing.unaligned: barriers overtake in-flight data, which is
    # stored with the checkpoint (savepoints stay aligned).
    unaligned: bool = False
    # execution.checkpointing.aligned-checkpoint-timeout (ms, with unaligned): each
    # checkpoint starts aligned and a task switches to unaligned once this long has
    # passed since the trigger; 0 starts unaligned (Flink's default).
    aligned_timeout_ms: int = 0

    @property
    def enabled(self) -> bool:
        return self.interval_ms > 0

    def validate(self) -> None:
        if self.interval_ms < 0:
            raise ConfigError("checkpoint interval must be >= 0 ms (0 disables checkpoints)")
        if self.interval_ms and self.interval_ms < 10:
            raise ConfigError("checkpoint interval must be at least 10 ms")
        if self.timeout_ms <= 0:
            raise ConfigError("checkpoint timeout must be > 0 ms")
        if self.min_pause_ms < 0:
            raise ConfigError("checkpoint min pause must be >= 0 ms")
        if self.max_concurrent < 1:
            raise ConfigError("max concurrent checkpoints must be >= 1")
        if self.tolerable_failures < 0:
            raise ConfigError("tolerable checkpoint failures must be >= 0")
        if self.retained < 1:
            raise ConfigError("retained checkpoints must be >= 1")
        if self.aligned_timeout_ms < 0:
            raise ConfigError(
                "execution.checkpointing.aligned-checkpoint-timeout must be >= 0 ms"
                " (0: unaligned from the start)"
            )
        if self.unaligned and self.mode is not CheckpointingMode.EXACTLY_ONCE:
            raise ConfigError(
                "execution.checkpointing.unaligned: true needs execution.checkpointing.mode:"
                " exactly-once (at-least-once checkpoints never align, so there is nothing"
                " to unalign); drop one of the two"
            )
        if self.unaligned and self.max_concurrent > 1:
            raise ConfigError(
                "execution.checkpointing.unaligned: true needs"
                " execution.checkpointing.max-concurrent-checkpoints: 1 (as in Flink, unaligned"
                " checkpoints do not run concurrently); set it to 1"
            )

    def alignment_timeout_ms(self, savepoint: bool) -> int | None:
        """How long a checkpoint's tasks align before switching to unaligned: None
        (always aligned: unaligned checkpoints off, and every savepoint, as in Flink)
        or milliseconds (0: unaligned from the start)."""
        if not self.unaligned or savepoint:
            return None
        return self.aligned_timeout_ms


class RestartStrategyKind(enum.StrEnum):
    NONE = "none"
    FIXED_DELAY = "fixed-delay"
    FAILURE_RATE = "failure-rate"
    EXPONENTIAL_DELAY = "exponential-delay"


class RestartStrategyConfig(msgspec.Struct, frozen=True):
    """Flink's ``restart-strategy.*`` options; ``kind=None`` means the default.

    The default is ``fixed-delay`` with unlimited attempts and a 1 s delay when
    checkpointing is on, and ``none`` when it is off (as in Flink).
    """

    kind: RestartStrategyKind | None = None
    attempts: int = 2_147_483_647  # fixed-delay
    delay_ms: int = 1_000  # fixed-delay, failure-rate
    max_failures_per_interval: int = 1  # failure-rate
    failure_rate_interval_ms: int = 60_000  # failure-rate
    initial_backoff_ms: int = 1_000  # exponential-delay
    max_backoff_ms: int = 60_000  # exponential-delay
    backoff_multiplier: float = 1.5  # exponential-delay
    reset_backoff_threshold_ms: int = 3_600_000  # exponential-delay
    jitter_factor: float = 0.1  # exponential-delay

    def validate(self) -> None:
        if self.attempts < 0:
            raise ConfigError("restart attempts must be >= 0")
        if self.delay_ms < 0 or self.initial_backoff_ms < 0:
            raise ConfigError("restart delays must be >= 0 ms")
        if self.max_failures_per_interval < 1:
            raise ConfigError("failure-rate max failures per interval must be >= 1")
        if self.failure_rate_interval_ms <= 0:
            raise ConfigError("failure-rate interval must be > 0 ms")
        if self.backoff_multiplier < 1.0:
            raise ConfigError("exponential-delay backoff multiplier must be >= 1.0")
        if self.max_backoff_ms < self.initial_backoff_ms:
            raise ConfigError("exponential-delay max backoff must be >= initial backoff")
        if not 0.0 <= self.jitter_factor <= 1.0:
            raise ConfigError("exponential-delay jitter factor must be within [0, 1]")


class StateBackendType(enum.StrEnum):
    HASHMAP = "hashmap"
    ROCKSDB = "rocksdb"


class StateBackendConfig(msgspec.Struct, frozen=True):
    """Flink's ``state.backend.*`` options: where keyed state lives while a job runs.

    ``hashmap`` keeps keyed state in Python dicts (fast, bounded by memory);
    ``rocksdb`` keeps it in an embedded RocksDB per operator subtask under
    ``local_dir`` (``state.backend.rocksdb.localdir``; the system temporary
    directory when unset), bounded by disk.

    RocksDB's memory per operator subtask is bounded by ``block_cache_size``
    (``state.backend.rocksdb.block.cache-size``: data, index and filter blocks)
    plus ``write_buffer_size * write_buffer_count``
    (``state.backend.rocksdb.writebuffer.size`` / ``.count``: the memtables of
    all its states together, RocksDB's ``db_write_buffer_size``, so the bound
    does not grow with the number of states).  Defaults as Flink's: 8 MiB cache,
    2 x 64 MiB memtables.

    ``incremental`` (``execution.checkpointing.incremental``, default on):
    checkpoints store in ``<job dir>/shared/`` once what did not change (RocksDB's
    SST files; the ``hashmap`` backend's unchanged timer tables) and reference it.

    ``local_recovery`` (``state.backend.local-recovery``): a TaskManager keeps a
    local copy of each rocksdb subtask's last completed checkpoint, and a task
    restarted on it restores from that copy instead of checkpoint storage.
    """

    type: StateBackendType = StateBackendType.HASHMAP
    local_dir: str | None = None
    incremental: bool | None = None  # execution.checkpointing.incremental; None: on
    block_cache_size: int = 8 * MIB
    write_buffer_size: int = 64 * MIB
    write_buffer_count: int = 2
    block_size: int = 4 * KIB
    background_threads: int = 2
    local_recovery: bool = False

    @property
    def incremental_checkpoints(self) -> bool:
        return True if self.incremental is None else self.incremental

    def validate(self) -> None:
        if self.block_cache_size < 0:
            raise ConfigError("state.backend.rocksdb.block.cache-size must be >= 0 bytes")
        if self.write_buffer_size < 64 * KIB:
            raise ConfigError("state.backend.rocksdb.writebuffer.size must be at least 64kb")
        if self.write_buffer_count < 1:
            raise ConfigError("state.backend.rocksdb.writebuffer.count must be >= 1")
        if self.block_size < 1 * KIB:
            raise ConfigError("state.backend.rocksdb.block.blocksize must be at least 1kb")
        if self.background_threads < 1:
            raise ConfigError("state.backend.rocksdb.thread.num must be >= 1")


class S3CredentialsProvider(enum.StrEnum):
    """Where the processes of a job take their S3 credentials from (never the job config).

    ``default``: botocore's chain (environment, profile files, web identity, instance
    metadata); ``environment``: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``
    (``AWS_SESSION_TOKEN``) only; ``profile``: the profile ``s3.profile`` of the AWS
    config/credentials files; ``web-identity``: ``AWS_ROLE_ARN`` +
    ``AWS_WEB_IDENTITY_TOKEN_FILE`` only (IRSA, workload identity); ``anonymous``:
    unsigned requests (public buckets).
    """

    DEFAULT = "default"
    ENVIRONMENT = "environment"
    PROFILE = "profile"
    WEB_IDENTITY = "web-identity"
    ANONYMOUS = "anonymous"


_REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


class S3Config(msgspec.Struct, frozen=True):
    """Flink's ``s3.*`` options: how every process of a job reaches ``s3://`` storage.

    ``None`` leaves a setting to the process's environment (``AWS_ENDPOINT_URL``,
    ``AWS_REGION``...), so a job without ``s3.*`` options behaves as before.
    Secrets are not options: they would travel in the job's HA record and its
    deployment messages (see ``s3.credentials.provider``).
    """

    endpoint: str | None = None  # s3.endpoint: http(s)://host[:port] of an S3-compatible store
    region: str | None = None  # s3.region
    path_style_access: bool | None = None  # s3.path.style.access
    credentials_provider: S3CredentialsProvider = S3CredentialsProvider.DEFAULT
    profile: str | None = None  # s3.profile, for s3.credentials.provider: profile

    def validate(self) -> None:
        if self.endpoint is not None:
            url = urllib.parse.urlsplit(self.endpoint)
            try:
                url.port  # noqa: B018 - raises on a port that is not a number
            except ValueError:
                url = url._replace(netloc="")
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ConfigError(
                    f"s3.endpoint={self.endpoint!r} is not an endpoint URL: write"
                    " http(s)://host[:port], for example http://minio.storage:9000"
                )
        if self.region is not None and not _REGION.match(self.region):
            raise ConfigError(
                f"s3.region={self.region!r} is not a region name: write one such as us-east-1"
            )
        if self.credentials_provider is S3CredentialsProvider.PROFILE and not self.profile:
            raise ConfigError(
                "s3.credentials.provider: profile needs s3.profile (the name of a profile in"
                " the AWS config/credentials files of every JobManager and TaskManager)"
            )
        if self.profile and self.credentials_provider is not S3CredentialsProvider.PROFILE:
            raise ConfigError(
                f"s3.profile={self.profile!r} is used only with s3.credentials.provider:"
                f" profile (it is {self.credentials_provider.value}): set both or neither"
            )


class JobConfig(msgspec.Struct, frozen=True):
    """Everything that shapes one job's execution."""

    name: str = "job"
    parallelism: int = 1
    max_parallelism: int = 128
    checkpointing: CheckpointConfig = CheckpointConfig()
    restart_strategy: RestartStrategyConfig = RestartStrategyConfig()
    state_backend: StateBackendConfig = StateBackendConfig()
    s3: S3Config = S3Config()
    batch_size: int = 1024  # records per network batch
    channel_capacity: int = 8  # batches buffered per input channel

    def validate(self) -> None:
        if self.parallelism < 1:
            raise ConfigError(f"parallelism must be >= 1, got {self.parallelism}")
        if not 1 <= self.max_parallelism <= 32_768:
            raise ConfigError(
                f"max parallelism must be within [1, 32768], got {self.max_parallelism}"
            )
        if self.parallelism > self.max_parallelism:
            raise ConfigError(
                f"parallelism {self.parallelism} exceeds max parallelism {self.max_parallelism};"
                " raise max parallelism or lower parallelism"
            )
        if self.batch_size < 1 or self.channel_capacity < 1:
            raise ConfigError("batch size and channel capacity must be >= 1")
        self.checkpointing.validate()
        self.restart_strategy.validate()
        self.state_backend.validate()
        self.s3.validate()


# Flink-style option keys accepted by ``-D key=value`` on the CLI and by the
# REST submission's ``config`` map.
_OPTIONS: dict[str, tuple[str | None, str, type]] = {
    "pipeline.name": (None, "name", str),
    "parallelism.default": (None, "parallelism", int),
    "pipeline.max-parallelism": (None, "max_parallelism", int),
    "execution.batch-size": (None, "batch_size", int),
    "execution.channel-capacity": (None, "channel_capacity", int),
    "execution.checkpointing.interval": ("checkpointing", "interval_ms", int),
    "execution.checkpointing.mode": ("checkpointing", "mode", CheckpointingMode),
    "execution.checkpointing.timeout": ("checkpointing", "timeout_ms", int),
    "execution.checkpointing.min-pause": ("checkpointing", "min_pause_ms", int),
    "execution.checkpointing.max-concurrent-checkpoints": ("checkpointing", "max_concurrent", int),
    "execution.checkpointing.tolerable-failed-checkpoints": (
        "checkpointing",
        "tolerable_failures",
        int,
    ),
    "state.checkpoints.num-retained": ("checkpointing", "retained", int),
    "execution.checkpointing.unaligned": ("checkpointing", "unaligned", bool),
    "execution.checkpointing.aligned-checkpoint-timeout": (
        "checkpointing",
        "aligned_timeout_ms",
        int,
    ),
    "state.backend.type": ("state_backend", "type", StateBackendType),
    "state.backend.rocksdb.localdir": ("state_backend", "local_dir", str),
    "state.backend.rocksdb.block.cache-size": ("state_backend", "block_cache_size", MemorySize),
    "state.backend.rocksdb.block.blocksize": ("state_backend", "block_size", MemorySize),
    "state.backend.rocksdb.writebuffer.size": ("state_backend", "write_buffer_size", MemorySize),
    "state.backend.rocksdb.writebuffer.count": ("state_backend", "write_buffer_count", int),
    "state.backend.rocksdb.thread.num": ("state_backend", "background_threads", int),
    "state.backend.local-recovery": ("state_backend", "local_recovery", bool),
    "execution.checkpointing.incremental": ("state_backend", "incremental", bool),
    "s3.endpoint": ("s3", "endpoint", str),
    "s3.region": ("s3", "region", str),
    "s3.path.style.access": ("s3", "path_style_access", bool),
    "s3.credentials.provider": ("s3", "credentials_provider", S3CredentialsProvider),
    "s3.profile": ("s3", "profile", str),
    "restart-strategy.type": ("restart_strategy", "kind", RestartStrategyKind),
    "restart-strategy.fixed-delay.attempts": ("restart_strategy", "attempts", int),
    "restart-strategy.fixed-delay.delay": ("restart_strategy", "delay_ms", int),
    "restart-strategy.failure-rate.delay": ("restart_strategy", "delay_ms", int),
    "restart-strategy.failure-rate.max-failures-per-interval": (
        "restart_strategy",
        "max_failures_per_interval",
        int,
    ),
    "restart-strategy.failure-rate.failure-rate-interval": (
        "restart_strategy",
        "failure_rate_interval_ms",
        int,
    ),
    "restart-strategy.exponential-delay.initial-backoff": (
        "restart_strategy",
        "initial_backoff_ms",
        int,
    ),
    "restart-strategy.exponential-delay.max-backoff": ("restart_strategy", "max_backoff_ms", int),
    "restart-strategy.exponential-delay.backoff-multiplier": (
        "restart_strategy",
        "backoff_multiplier",
        float,
    ),
    "restart-strategy.exponential-delay.jitter-factor": (
        "restart_strategy",
        "jitter_factor",
        float,
    ),
}


# Flink's static-key options, refused: a secret in the job config would be stored in the
# HA metadata, shown by ``GET /jobs/{id}/config`` and sent to every TaskManager.
_REFUSED = {
    key: (
        f"option {key} is not accepted: a secret in the job config would be stored in the"
        " HA metadata and sent to every process. Give the credentials to the JobManager and"
        " TaskManager pods instead (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY from a Secret, an"
        " AWS profile with s3.credentials.provider: profile, or web identity/IRSA)"
    )
    for key in ("s3.access-key", "s3.secret-key", "s3.access.key", "s3.secret.key")
}


def _parse_bool(raw: str) -> bool:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    raise ValueError(raw)


def option_keys() -> list[str]:
    return sorted(_OPTIONS)


def apply_options(config: JobConfig, options: Mapping[str, str]) -> JobConfig:
    """Return ``config`` with Flink-style ``key=value`` options applied.

    Durations are milliseconds.  Unknown keys and unparsable values raise
    :class:`ConfigError` naming the key and the accepted form.
    """
    for key, raw in options.items():
        if key in _REFUSED:
            raise ConfigError(_REFUSED[key])
        try:
            section, field, kind = _OPTIONS[key]
        except KeyError:
            raise ConfigError(
                f"unknown option {key!r}; known options: {', '.join(option_keys())}"
            ) from None
        try:
            value = _parse_bool(raw) if kind is bool else kind(raw)
            if kind is MemorySize:
                value = int(value)  # plain data: it travels in msgspec messages
        except ValueError:
            hint = (
                f"one of {[m.value for m in kind]}"
                if issubclass(kind, enum.Enum)
                else "true or false"
                if kind is bool
                else "a memory size such as 64mb, 512kb or 1gb"
                if kind is MemorySize
                else kind.__name__
            )
            raise ConfigError(f"option {key}={raw!r} is invalid: expected {hint}") from None
        if section is None:
            config = msgspec.structs.replace(config, **{field: value})
        else:
            inner = msgspec.structs.replace(getattr(config, section), **{field: value})
            config = msgspec.structs.replace(config, **{section: inner})
    return config


class ClusterConfig(msgspec.Struct, frozen=True):
    """JobManager process settings (Flink's ``heartbeat.*``, ``state.checkpoints.dir``)."""

    checkpoint_dir: str
    savepoint_dir: str | None = None  # default target of savepoints (state.savepoints.dir)
    heartbeat_interval_ms: int = 10_000
    heartbeat_timeout_ms: int = 50_000
    slot_request_timeout_ms: int = 300_000

    def validate(self) -> None:
        if self.heartbeat_interval_ms <= 0:
            raise ConfigError("heartbeat interval must be > 0 ms")
        if self.heartbeat_timeout_ms <= self.heartbeat_interval_ms:
            raise ConfigError(
                f"heartbeat timeout ({self.heartbeat_timeout_ms} ms) must exceed the heartbeat"
                f" interval ({self.heartbeat_interval_ms} ms)"
            )
        if self.slot_request_timeout_ms <= 0:
            raise ConfigError("slot request timeout must be > 0 ms")


def fixed_delay(attempts: int, delay_ms: int) -> RestartStrategyConfig:
    return RestartStrategyConfig(
        RestartStrategyKind.FIXED_DELAY, attempts=attempts, delay_ms=delay_ms
    )


def failure_rate(max_failures: int, interval_ms: int, delay_ms: int) -> RestartStrategyConfig:
    return RestartStrategyConfig(
        RestartStrategyKind.FAILURE_RATE,
        max_failures_per_interval=max_failures,
        failure_rate_interval_ms=interval_ms,
        delay_ms=delay_ms,
    )


def exponential_delay(
    initial_backoff_ms: int,
    max_backoff_ms: int,
    multiplier: float = 1.5,
    reset_threshold_ms: int = 3_600_000,
    jitter_factor: float = 0.1,
) -> RestartStrategyConfig:
    return RestartStrategyConfig(
        RestartStrategyKind.EXPONENTIAL_DELAY,
        initial_backoff_ms=initial_backoff_ms,
        max_backoff_ms=max_backoff_ms,
        backoff_multiplier=multiplier,
        reset_backoff_threshold_ms=reset_threshold_ms,
        jitter_factor=jitter_factor,
    )


def no_restart() -> RestartStrategyConfig:
    return RestartStrategyConfig(RestartStrategyKind.NONE)
