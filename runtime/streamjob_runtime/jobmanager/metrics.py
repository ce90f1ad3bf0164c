"""Prometheus metrics of the JobManager, collected from live state at each scrape."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from streamjob_runtime.jobmanager.dispatcher import JobManager


class JobManagerCollector(Collector):
    def __init__(self, jm: JobManager) -> None:
        self.jm = jm

    def collect(self) -> Iterator[Metric]:
        jm = self.jm
        yield GaugeMetricFamily(
            "streamjob_taskmanagers", "Registered TaskManagers", len(jm.rm.taskmanagers)
        )
        yield GaugeMetricFamily(
            "streamjob_slots_available", "Free task slots", jm.rm.slots_available
        )
        state = GaugeMetricFamily(
            "streamjob_job_state", "1 for the job's current state", labels=["job_id", "state"]
        )
        restarts = CounterMetricFamily("streamjob_job_restarts", "Job restarts", labels=["job_id"])
        completed = CounterMetricFamily(
            "streamjob_checkpoints_completed", "Completed checkpoints", labels=["job_id"]
        )
        failed = CounterMetricFamily(
            "streamjob_checkpoints_failed", "Failed checkpoints", labels=["job_id"]
        )
        skipped = CounterMetricFamily(
            "streamjob_restore_checkpoints_skipped",
            "Retained checkpoints or savepoints a restore could not use (missing or corrupt)",
            labels=["job_id"],
        )
        duration = GaugeMetricFamily(
            "streamjob_last_checkpoint_duration_seconds",
            "Duration of the latest completed checkpoint",
            labels=["job_id"],
        )
        size = GaugeMetricFamily(
            "streamjob_last_checkpoint_size_bytes",
            "Bytes persisted by the latest completed checkpoint",
            labels=["job_id"],
        )
        alignment = GaugeMetricFamily(
            "streamjob_last_checkpoint_alignment_seconds",
            "Barrier alignment time of the latest completed checkpoint",
            labels=["job_id"],
        )
        persisted = GaugeMetricFamily(
            "streamjob_last_checkpoint_persisted_data_bytes",
            "In-flight data (channel state) stored by the latest completed checkpoint;"
            " 0 when it was aligned",
            labels=["job_id"],
        )
        unaligned = GaugeMetricFamily(
            "streamjob_last_checkpoint_unaligned",
            "1 when the latest completed checkpoint was unaligned (in some subtask)",
            labels=["job_id"],
        )
        records_in = CounterMetricFamily(
            "streamjob_records_in", "Records into a vertex", labels=["job_id", "vertex"]
        )
        records_out = CounterMetricFamily(
            "streamjob_records_out", "Records out of a vertex", labels=["job_id", "vertex"]
        )
        backpressure = CounterMetricFamily(
            "streamjob_backpressured_seconds",
            "Time upstreams waited on a full input channel",
            labels=["job_id", "vertex"],
        )
        for job_id, job in jm.jobs.items():
            state.add_metric([job_id, job.state.value], 1)
            restarts.add_metric([job_id], job.restarts)
            completed.add_metric([job_id], job.coordinator.counts["completed"])
            failed.add_metric([job_id], job.coordinator.counts["failed"])
            skipped.add_metric([job_id], job.skipped_restore_points)
            latest = job.store.latest()
            if latest is not None:
                duration.add_metric([job_id], latest.duration_ms / 1000)
                size.add_metric([job_id], latest.bytes)
                alignment.add_metric([job_id], latest.alignment_ms / 1000)
            stats = next(
                (h for h in reversed(job.coordinator.history) if h.status == "COMPLETED"), None
            )
            if stats is not None:
                persisted.add_metric([job_id], stats.channel_state_bytes)
                unaligned.add_metric([job_id], 1 if stats.unaligned else 0)
            for v in job.details().vertices:
                records_in.add_metric([job_id, v.id], v.records_in)
                records_out.add_metric([job_id, v.id], v.records_out)
                backpressure.add_metric([job_id, v.id], v.backpressured_ms / 1000)
        yield from (
            state,
            restarts,
            completed,
            failed,
            skipped,
            duration,
            size,
            alignment,
            persisted,
            unaligned,
            records_in,
            records_out,
            backpressure,
        )


def exposition(jm: JobManager) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobManagerCollector(jm))
    return generate_latest(registry)
