"""Acting: applies a Plan to the world: Kubernetes writes, JobManager REST calls, status, Events.

``actor`` takes a plan's actions in order and records its status; ``status`` writes
the status (the write-ahead log) with resourceVersion preconditions; ``children``
applies and deletes child objects; ``events`` posts Events; ``savepoints`` disposes
of expired savepoints the operator can see; ``credentials`` keeps each job's CA,
certificate and REST token Secrets (made with ``certificates``) and hands the REST
client its token and CAs.
"""
