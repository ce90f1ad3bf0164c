"""A stateful Kubernetes API server emulator for tests (`KubeEmulator`), with pytest fixtures
in `tests.kube.fixtures`.

It runs an aiohttp server on 127.0.0.1:<free port> on its own event loop in a background
thread, so clients under test (kubernetes_asyncio, kopf) can run on any loop or thread.

Emulated as kube-apiserver does it:

- Discovery: /api, /api/v1, /apis, /apis/<group>, /apis/<group>/<version> (with `<plural>/status`
  entries), /version, /healthz, /livez, /readyz.
- Built-in kinds (registry.BUILTINS): namespaces, configmaps, secrets, serviceaccounts, services,
  endpoints, pods, persistentvolumeclaims, events, nodes (core/v1); deployments, statefulsets,
  replicasets, daemonsets (apps/v1); jobs (batch/v1); poddisruptionbudgets (policy/v1); leases
  (coordination.k8s.io/v1); networkpolicies (networking.k8s.io/v1; stored, not enforced);
  roles, rolebindings, clusterroles, clusterrolebindings (rbac/v1);
  customresourcedefinitions (apiextensions.k8s.io/v1). Creating a CRD serves its resource at
  once (every served version; one storage shared by all versions, no conversion) with an
  Established status; deleting it deletes its objects first (cleanup finalizer).
- Namespaced and cluster-scoped resources; namespaced lists across all namespaces. The
  namespaces default, kube-system, kube-public and kube-node-lease exist. Creating in a missing
  namespace is 404, in a terminating one 403. Deleting a namespace deletes its content and the
  namespace goes once empty.
- One global resourceVersion counter; uid, creationTimestamp, generation (for apps/*, batch,
  policy, CRDs and custom resources: bumped on changes outside metadata and status, and when
  deletionTimestamp is set). A write that changes nothing is a no-op (no new
  resourceVersion, no event).
- POST (201; generateName), GET, PUT (409 Conflict on a stale metadata.resourceVersion;
  unconditional without one, except custom resources, which require it: 422), PATCH with
  application/merge-patch+json, application/json-patch+json (`test` failures are 422, as kopf
  expects) and application/strategic-merge-patch+json (approximate: a merge patch that also
  merges a few well-known lists by key, e.g. containers/env/volumes by name, ownerReferences by
  uid, conditions by type, container ports by containerPort and service ports by port,
  finalizers as a set, `$patch: delete|replace`; see patching.MERGE_KEYS; other lists are
  replaced). kubernetes_asyncio sends a dict patch as a strategic merge patch to built-in kinds
  and as a JSON patch to custom objects: pass **fixtures.MERGE_PATCH. A resourceVersion inside
  a patch is a precondition (409). Strategic merge patches to custom resources are 415, a JSON
  patch that is not a list 400. DELETE (gone now: 200 with a Status, or with the object for pods
  and serviceaccounts; waiting for finalizers: 200 with the object, 202 only with
  orphanDependents=false, as kube-apiserver answers), deletecollection, DeleteOptions
  preconditions (uid, resourceVersion), propagationPolicy, orphanDependents.
- Status subresource: writes to /status change only status; writes to the main resource keep the
  old status; create drops status.
- dryRun=All on every write: validated and answered, not stored.
- labelSelector: =, ==, !=, in, notin, exists, !exists. fieldSelector: metadata.name and
  metadata.namespace (=, ==, !=) everywhere, plus the fields the real server supports for
  events (involvedObject.*, reason, type, ...), pods, secrets (type) and namespaces; other
  fields are 400 as in Kubernetes. limit/continue pagination (over the current state).
- Watches (?watch=true): without resourceVersion (or "0") the current objects come first as
  ADDED; from resourceVersion N every later event exactly once; 410 Gone (an ERROR event) for a
  resourceVersion older than the retained history (`history` events, or `compact()`);
  selector transitions (an object stops matching: DELETED; starts matching: ADDED);
  timeoutSeconds; allowWatchBookmarks (a BOOKMARK every `bookmark_interval` seconds when idle);
  sendInitialEvents=true (ADDED events, then a BOOKMARK annotated k8s.io/initial-events-end).
- Finalizers: deletion sets deletionTimestamp (and deletionGracePeriodSeconds: 0), the object
  stays until an update removes the last finalizer; no new finalizers while deleting.
- Garbage collection by ownerReferences (uid): Background (dependents deleted right after the
  owner is gone, recursively, honouring their finalizers; dangling references to a gone owner
  are removed when another owner remains), Foreground (owner waits with the foregroundDeletion
  finalizer until its dependents are gone) and Orphan (references removed). Objects created
  with only absent owners are collected soon after, as the real garbage collector does.
- Validation with 422 Invalid: names (DNS subdomain; DNS label for namespaces, DNS-1035 for
  services, path segments for RBAC), labels and annotations, finalizers, ownerReferences (at
  most one controller), Pod containers, ConfigMap/Secret keys and values, Lease times (RFC
  3339), Deployment-like selector vs template labels and containers, Service ports, RoleBinding
  roleRef, CRD names and versions. Immutable: Deployment-like spec.selector, RoleBinding
  roleRef, Service clusterIP, immutable ConfigMaps/Secrets, CRD group/plural/scope, a Pod's spec
  but for images, activeDeadlineSeconds and tolerations (new Pods get status.phase Pending).
- Defaults on every write (defaults.py): pod templates (restartPolicy, dnsPolicy, schedulerName,
  securityContext, termination grace, container imagePullPolicy/terminationMessage*/resources,
  port protocol), Deployment replicas, strategy, revisionHistoryLimit, progressDeadlineSeconds,
  StatefulSet/Job/DaemonSet basics, Service type, clusterIP, sessionAffinity, ipFamilies,
  targetPort; Secret stringData folded into base64 data; Namespace phase. So a naive
  desired-vs-stored comparison differs as in a real cluster, and re-writing the un-defaulted
  desired state is a no-op.
- Custom resources through their CRD's structural schema (schema.py) on every create, update,
  patch and status write: unknown fields pruned (a `Warning: 299` header per field, none with
  fieldValidation=Ignore, 400 with fieldValidation=Strict as kubectl sends it), nulls of
  non-nullable fields dropped, `default`s filled in top-down, types, enums, bounds, lengths,
  patterns and `required` checked, and `x-kubernetes-validations` CEL rules evaluated
  (common-expression-language) with transition rules (`oldSelf`, `optionalOldSelf`, map-list
  items correlated by key), messageExpression, fieldPath and reason; errors are 422 Invalid
  with the real server's messages. A CRD whose rule does not compile is refused.
- Creating an object that carries a metadata.resourceVersion fails (500, as etcd storage
  answers), as does re-creating an object read from the server without clearing it.
- Test hooks: direct thread-safe get/list/create/put_object/patch/delete/events_for,
  wait_for(condition) woken by every state change, compact(), drop_watches(), watch_count(),
  inject_error(status, method, path_contains, times), on_request(action, method,
  path_contains, when, times) (runs once a matching request succeeded, before its answer is
  sent: e.g. SIGKILL the client at a given write), requests (a log of what was served),
  write_kubeconfig(path), internal_errors (the `kube` fixture asserts the emulator had none).
- The Service proxy subresource (/api/v1/namespaces/<ns>/services/[http:]<name>[:<port>]/proxy/
  <path>, what `kubectl proxy` exposes) forwards to the endpoint a backend names
  (`serve_services`; the test kubelet, tests.kube.pods, installs one: http:// or, unverified,
  https://); without one, or without a ready endpoint, 503 "no endpoints available for
  service". It passes Content-Type and Authorization on (kube-apiserver drops the latter).

Not emulated (know this before relying on it):

- No controllers: nothing creates ReplicaSets or Pods for a Deployment, no status is filled in,
  no Endpoints; play the controller with `put_object` (status included).
- No authentication or authorization: any token (or none) is accepted, no RBAC checks,
  no admission webhooks, no quotas, no SelfSubjectAccessReview.
- Custom resource schemas: no defaults on read, no `format` checks, no CEL cost budgets, no
  validation ratcheting, no Kubernetes CEL extension libraries (quantity, url, lists, regex
  `find`...); no CRD conversion webhooks; no printer columns; no `scale` subresource; no pod
  log/exec/binding/eviction.
- No server-side apply (application/apply-patch+yaml is 415), no managedFields, no
  fieldValidation=Strict for built-in kinds, no protobuf, no Table output, no aggregated (v2)
  discovery.
- Strategic merge patch is approximate (see above); `$retainKeys`, `$deleteFromPrimitiveList`
  and `$setElementOrder` are ignored.
- Lists are not snapshot-consistent across continue pages (each page reads the current state);
  `resourceVersion`/`resourceVersionMatch` on a list are ignored (always the latest).
- Graceful deletion periods are not waited for (a pod without finalizers goes at once).
- No per-namespace kube-root-ca.crt ConfigMap or `default` ServiceAccount (real clusters have
  both), no Nodes, no kube-system workloads.
- Watches are not closed when their CRD is deleted; a watch from a future resourceVersion just
  waits for it.
- Events are stored like any object: no aggregation or rate limits; events.k8s.io is not served.
- Garbage collection is synchronous with the owner's removal (the real one is a controller and
  lags); it does not emit events.
"""

from tests.kube.server import KubeEmulator, RequestRecord
from tests.kube.store import ApiError

__all__ = ["ApiError", "KubeEmulator", "RequestRecord"]
