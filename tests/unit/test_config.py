from __future__ import annotations

import pytest

from streamjob_runtime import config


def test_flink_style_options_set_typed_fields() -> None:
    c = config.apply_options(
        config.JobConfig(),
        {
            "execution.checkpointing.interval": "1000",
            "execution.checkpointing.mode": "at-least-once",
            "restart-strategy.type": "failure-rate",
            "parallelism.default": "3",
        },
    )
    assert c.checkpointing.interval_ms == 1000
    assert c.checkpointing.mode is config.CheckpointingMode.AT_LEAST_ONCE
    assert c.restart_strategy.kind is config.RestartStrategyKind.FAILURE_RATE
    assert c.parallelism == 3


def test_state_backend_options_choose_the_backend_per_job() -> None:
    c = config.apply_options(
        config.JobConfig(),
        {"state.backend.type": "rocksdb", "state.backend.rocksdb.localdir": "/var/tmp/x"},
    )
    assert c.state_backend.type is config.StateBackendType.ROCKSDB
    assert c.state_backend.local_dir == "/var/tmp/x"
    assert config.JobConfig().state_backend.type is config.StateBackendType.HASHMAP
    with pytest.raises(config.ConfigError, match=r"state.backend.type='rocks'.*'hashmap'"):
        config.apply_options(config.JobConfig(), {"state.backend.type": "rocks"})


def test_incremental_checkpoints_are_the_default_on_both_backends() -> None:
    rocks = config.apply_options(config.JobConfig(), {"state.backend.type": "rocksdb"})
    assert rocks.state_backend.incremental_checkpoints
    full = config.apply_options(rocks, {"execution.checkpointing.incremental": "false"})
    assert not full.state_backend.incremental_checkpoints
    assert config.JobConfig().state_backend.incremental_checkpoints
    with pytest.raises(config.ConfigError, match="expected true or false"):
        config.apply_options(rocks, {"execution.checkpointing.incremental": "yes"})
    heap = config.apply_options(config.JobConfig(), {"execution.checkpointing.incremental": "TRUE"})
    heap.validate()
    assert heap.state_backend.incremental_checkpoints


def test_unknown_option_lists_the_known_ones() -> None:
    with pytest.raises(
        config.ConfigError, match=r"unknown option 'execution\.chekpointing'.*known"
    ):
        config.apply_options(config.JobConfig(), {"execution.chekpointing": "1"})


def test_bad_value_says_what_is_expected() -> None:
    with pytest.raises(config.ConfigError, match="expected one of"):
        config.apply_options(config.JobConfig(), {"execution.checkpointing.mode": "twice"})
    with pytest.raises(config.ConfigError, match="expected int"):
        config.apply_options(config.JobConfig(), {"execution.checkpointing.interval": "1s"})


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (config.JobConfig(parallelism=0), "parallelism must be >= 1"),
        (config.JobConfig(parallelism=200), "exceeds max parallelism"),
        (config.JobConfig(checkpointing=config.CheckpointConfig(retained=0)), "retained"),
        (config.JobConfig(checkpointing=config.CheckpointConfig(interval_ms=5)), "at least 10"),
    ],
)
def test_invalid_settings_are_refused_with_a_reason(cfg: config.JobConfig, message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        cfg.validate()


def test_heartbeat_timeout_must_exceed_the_interval() -> None:
    with pytest.raises(config.ConfigError, match="must exceed the heartbeat interval"):
        config.ClusterConfig(
            "/tmp/x", heartbeat_interval_ms=5_000, heartbeat_timeout_ms=5_000
        ).validate()


def test_unaligned_checkpoint_options_and_what_they_mean_per_checkpoint() -> None:
    c = config.apply_options(
        config.JobConfig(),
        {
            "execution.checkpointing.unaligned": "true",
            "execution.checkpointing.aligned-checkpoint-timeout": "250",
        },
    )
    c.validate()
    assert c.checkpointing.unaligned
    assert c.checkpointing.alignment_timeout_ms(savepoint=False) == 250
    assert c.checkpointing.alignment_timeout_ms(savepoint=True) is None  # always aligned
    assert config.CheckpointConfig().alignment_timeout_ms(savepoint=False) is None


@pytest.mark.parametrize(
    ("checkpointing", "message"),
    [
        (
            config.CheckpointConfig(unaligned=True, mode=config.CheckpointingMode.AT_LEAST_ONCE),
            "needs execution.checkpointing.mode: exactly-once",
        ),
        (config.CheckpointConfig(aligned_timeout_ms=-1), "aligned-checkpoint-timeout must be"),
        (
            config.CheckpointConfig(unaligned=True, max_concurrent=2),
            "needs execution.checkpointing.max-concurrent-checkpoints: 1",
        ),
    ],
)
def test_bad_unaligned_settings_are_refused_with_a_reason(
    checkpointing: config.CheckpointConfig, message: str
) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.JobConfig(checkpointing=checkpointing).validate()


def test_rocksdb_memory_options_take_flink_memory_sizes_and_refuse_nonsense() -> None:
    c = config.apply_options(
        config.JobConfig(),
        {
            "state.backend.rocksdb.block.cache-size": "16mb",
            "state.backend.rocksdb.writebuffer.size": "4 MB",
            "state.backend.rocksdb.writebuffer.count": "3",
            "state.backend.rocksdb.block.blocksize": "8kb",
            "state.backend.rocksdb.thread.num": "1",
            "state.backend.local-recovery": "true",
        },
    )
    s = c.state_backend
    assert (s.block_cache_size, s.write_buffer_size, s.write_buffer_count) == (16 << 20, 4 << 20, 3)
    assert (s.block_size, s.background_threads, s.local_recovery) == (8 << 10, 1, True)
    assert type(s.block_cache_size) is int  # plain data: it travels in messages
    c.validate()
    defaults = config.StateBackendConfig()
    assert (defaults.block_cache_size, defaults.write_buffer_size) == (8 << 20, 64 << 20)
    with pytest.raises(config.ConfigError, match=r"cache-size='lots'.*memory size such as 64mb"):
        config.apply_options(config.JobConfig(), {"state.backend.rocksdb.block.cache-size": "lots"})
    small = config.apply_options(
        config.JobConfig(), {"state.backend.rocksdb.writebuffer.size": "1kb"}
    )
    with pytest.raises(config.ConfigError, match=r"writebuffer.size must be at least 64kb"):
        small.validate()


def test_s3_options_set_the_jobs_object_storage_settings() -> None:
    c = config.apply_options(
        config.JobConfig(),
        {
            "s3.endpoint": "http://minio.storage:9000",
            "s3.region": "eu-west-1",
            "s3.path.style.access": "true",
            "s3.credentials.provider": "profile",
            "s3.profile": "streamjob",
        },
    )
    c.validate()
    assert c.s3 == config.S3Config(
        endpoint="http://minio.storage:9000",
        region="eu-west-1",
        path_style_access=True,
        credentials_provider=config.S3CredentialsProvider.PROFILE,
        profile="streamjob",
    )
    assert config.JobConfig().s3 == config.S3Config()  # nothing set: the environment decides


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"s3.endpoint": "minio:9000"}, r"s3.endpoint='minio:9000' is not an endpoint URL"),
        ({"s3.endpoint": "http://:9000"}, "write http\\(s\\)://host\\[:port\\]"),
        ({"s3.endpoint": "http://minio:ninety"}, "is not an endpoint URL"),
        ({"s3.region": "US East 1"}, "s3.region='US East 1' is not a region name"),
        ({"s3.credentials.provider": "profile"}, "profile needs s3.profile"),
        ({"s3.profile": "dev"}, "used only with s3.credentials.provider: profile"),
    ],
)
def test_bad_s3_options_are_refused_with_what_to_write(
    options: dict[str, str], message: str
) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.apply_options(config.JobConfig(), options).validate()


def test_s3_option_values_are_checked_when_parsed() -> None:
    with pytest.raises(config.ConfigError, match=r"s3.path.style.access='yes'.*true or false"):
        config.apply_options(config.JobConfig(), {"s3.path.style.access": "yes"})
    with pytest.raises(config.ConfigError, match=r"s3.credentials.provider='iam'.*'web-identity'"):
        config.apply_options(config.JobConfig(), {"s3.credentials.provider": "iam"})


@pytest.mark.parametrize("key", ["s3.access-key", "s3.secret-key"])
def test_static_s3_keys_are_refused_as_job_options(key: str) -> None:
    # A secret in the job config would land in the HA metadata and every deployment message.
    with pytest.raises(config.ConfigError, match=f"option {key} is not accepted.*from a Secret"):
        config.apply_options(config.JobConfig(), {key: "AKIA..."})
