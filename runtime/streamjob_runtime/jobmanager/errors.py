"""Errors the JobManager reports to REST clients (each maps to one HTTP status)."""

from __future__ import annotations


class SubmissionError(ValueError):
    """A request is invalid (HTTP 400); the message says what to fix."""


class ConflictError(RuntimeError):
    """The request conflicts with the job's state (HTTP 409); the message says why."""
