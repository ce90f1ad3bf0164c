"""Observing: reads Kubernetes and the JobManager's REST API for one pass; never mutates.

``resource`` reads the StreamJob itself (afresh each pass), ``children`` its
Deployments and HA metadata, ``jobmanager`` the JobManager's REST API (through an
injectable address resolution), and ``observer`` puts them together into planning's
``Observed``. ``kubeapi`` is the JSON-by-path access to the API server that acting
shares.
"""
