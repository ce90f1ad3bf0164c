"""The pure decision core of the reconcile loop: validate, classify, plan.

Each reconcile pass is observe -> validate -> plan -> act -> record. This package is
the middle: it takes what observing gathered (:class:`observed.Observed`), the
StreamJob's spec as the API server holds it, its status, and the time, and returns a
:class:`actions.Plan`: the actions for acting to take, in order, and the status to
record. Nothing here talks to Kubernetes or a JobManager, reads a clock or imports
kopf, aiohttp or a Kubernetes client (an import-linter contract keeps it so); the same
inputs always give the same plan.

Modules: ``validation`` (the spec's rules, the CRD's CEL rules among them, as
sentences), ``changes`` (what a spec change needs: nothing, a savepoint, a restart, a
rescale, an upgrade, suspend or resume), ``observed`` (the input), ``actions`` (the
output), ``steps`` (the write-ahead log's steps), ``lifecycle`` (the lifecycle state,
derived from status), ``clock`` (timestamps), ``stability`` (the STABLE gate),
``savepoints`` (records, history retention, periodic triggers, and a pass's savepoint
decisions), ``configuration`` (the operator's own settings), ``context`` (one pass:
inputs, gathered actions and errors), the decisions of a pass by concern
(``upgrade``, ``redeploy``, ``restore``, ``rollback``, ``running``, ``recovery``,
``deletion``, ``bluegreen``) and ``planner`` (:func:`planner.plan`, which orders them).
"""
