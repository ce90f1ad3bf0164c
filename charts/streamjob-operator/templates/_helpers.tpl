{{/* The chart name, or nameOverride. */}}
{{- define "streamjob-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of the release's objects: fullnameOverride, else the release name when it
already contains the chart name, else "<release>-<chart name>" (63 characters at most).
*/}}
{{- define "streamjob-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "streamjob-operator.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "streamjob-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's pods (never change them on upgrade). */}}
{{- define "streamjob-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "streamjob-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object of the release. */}}
{{- define "streamjob-operator.labels" -}}
helm.sh/chart: {{ include "streamjob-operator.chart" . }}
{{ include "streamjob-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: streamjob
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "streamjob-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "streamjob-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "streamjob-operator.leaseName" -}}
{{- default (include "streamjob-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{- define "streamjob-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
What the operator does in each namespace whose StreamJobs it reconciles: the rules of the
ClusterRole (every namespace) or of each watched namespace's Role. Every verb is there
for a reason; keep them in step with operator/streamjob_operator/__main__.py's docstring.
tests/delivery/test_chart.py checks them against the operator's needs and against the
JobManager Role the operator creates (operator/streamjob_operator/desired/rbac.py).
*/}}
{{- define "streamjob-operator.reconcileRules" -}}
# StreamJobs: kopf lists and watches them (list, watch), the loop reads one before each
# pass (get), kopf adds and removes its finalizer and keeps its progress in annotations
# (patch).
- apiGroups: [streamjob.dev]
  resources: [streamjobs]
  verbs: [get, list, watch, patch]
# Status is the operator's write-ahead log: read (get) and written (patch) every pass.
- apiGroups: [streamjob.dev]
  resources: [streamjobs/status]
  verbs: [get, patch]
# Children carry ownerReferences with blockOwnerDeletion, which clusters running the
# OwnerReferencesPermissionEnforcement admission plugin allow only to who may update the
# owner's finalizers (update).
- apiGroups: [streamjob.dev]
  resources: [streamjobs/finalizers]
  verbs: [update]
# The JobManager and TaskManager Deployments: observed (get), watched so a step waiting
# for their deletion or readiness goes on at once (list, watch), applied (create, update),
# removed on upgrades, suspension and when a blue-green colour goes (delete).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, delete]
# The JobManager Service, the submission and HA ConfigMaps, the pods' ServiceAccounts:
# observed or compared before applying (get), applied (create, update), removed when a
# blue-green colour goes or HA metadata is discarded (delete). The JobManager's Role
# holds configmaps get, create, update too, which the operator can grant only because it
# holds them.
- apiGroups: [""]
  resources: [services, configmaps, serviceaccounts]
  verbs: [get, create, update, delete]
# The JobManager's and TaskManager's Roles and RoleBindings: compared before applying
# (get), applied (create, update), removed when a blue-green colour goes (delete).
# Kubernetes lets the operator create or bind a Role only with rules it holds itself
# (hence the next two rules; it has no escalate or bind).
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, create, update, delete]
# The JobManagers' leader Leases: granted to the JobManager's Role (get, create, update),
# which the operator can do only holding them; deleted with the HA ConfigMap when a
# StreamJob's HA metadata is discarded, so a new JobManager does not wait out a crashed
# leader's lease (delete).
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, create, update, delete]
# The StreamJobs' NetworkPolicies (one per JobManager and TaskManager of each colour):
# compared before applying (get), applied (create, update), removed when a blue-green
# colour goes or networkPolicy.enabled is off (delete).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, update, delete]
# Each StreamJob's CA, pod certificate and REST token, Secrets it owns: read by name every
# pass, for the REST client and to renew them in time (get), made (create) and renewed
# (update). Never listed or watched, never another Secret; deleted with the StreamJob
# through their owner reference, not by the operator.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, create, update]
# Granted to the JobManager's Role (the leader labels its pod: list, patch), so the
# operator must hold it; it never touches pods itself.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, patch]
# Events on StreamJobs (upgrades, savepoints, errors), posted by the loop and by kopf.
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end }}

{{/* What kopf reads cluster-wide whatever it watches: the CRDs, to find StreamJob's. */}}
{{- define "streamjob-operator.crdRules" -}}
# kopf finds the StreamJob resource among the CRDs at start (list) and follows CRD changes
# (watch).
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
{{- end }}
