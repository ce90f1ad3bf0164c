"""Errors the JobManager reports to REST clients (each maps to one HTTP status)."""

from __future__ import annotations


class SubmissionError(ValueError):
    """A request is invalid (HTTP 400); the message says what to fix."""


class ForbiddenError(SubmissionError):
    """A job file or a directory outside the allowed roots (HTTP 403)."""


class ConflictError(RuntimeError):
    """The request conflicts with the job's state (HTTP 409); the message says why."""


class NotLeaderError(RuntimeError):
    """This JobManager is a standby (HTTP 503); the message says where the leader is."""

    def __init__(self, identity: str) -> None:
        super().__init__(
            f"JobManager {identity} is not the leader; find the leader through the HA"
            " services (or a Service that selects the leader pod) and retry there"
        )
