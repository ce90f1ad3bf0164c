"""Pure builders of a StreamJob's children: Deployments, Service, ConfigMap, RBAC, NetworkPolicies.

Every function here takes a :class:`target.StreamJob` (its identity and validated spec)
and a :class:`target.DeploymentTarget` (which colour, which savepoint) and returns plain
data: manifests as ``dict[str, Any]`` ready to apply, or the REST ``JobSubmission``.
Nothing here talks to Kubernetes or a JobManager, reads a clock, or imports kopf; the
same inputs always give equal output, so acting can compare desired and observed objects.

Modules: ``target`` (the inputs), ``metadata`` (names, labels, owner references),
``ha`` (HA flags and object names), ``podtemplate`` (secure defaults and the user's
podTemplate merge, the privileged settings refused), ``security`` (the credentials'
Secrets, mounts and flags), ``jobmanager``, ``taskmanager``, ``rbac``, ``network``
(NetworkPolicies), ``submission`` (engine options, the ConfigMap and the
JobSubmission) and ``children`` (all of it in apply order).
"""
