{{/*
Named templates shared by the chart's objects. Naming follows the usual Helm conventions
(cert-manager's chart): names are truncated to 63 characters, the DNS label limit.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects: fullnameOverride, else <release>-<name>. */}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels the operator's pods are selected by; never change them on upgrade. */}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "kubetune.labels" -}}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kubetune
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{- end }}

{{/* Labels on the CRDs (also written by `make crds` into templates/crds/). */}}
{{- define "kubetune.crdLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: crds
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: kubetune
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "kubetune.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kubetune.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "kubetune.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* True ("true") when the replicas share a kopf peering, i.e. replicaCount > 1. */}}
{{- define "kubetune.peering" -}}
{{- if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/* The kopf peering object's name. */}}
{{- define "kubetune.peeringName" -}}
{{- default (include "kubetune.fullname" .) .Values.peering.name }}
{{- end }}

{{/*
The operator's permissions, shared by the ClusterRole (all namespaces) and the per-namespace
Roles (watchNamespaces). Derived from what operator/kubetune_operator does:
  kube.py      GET finetunejobs; PATCH finetunejobs/status; server-side apply (create + patch)
               of ServiceAccounts, Roles, RoleBindings, Services, ConfigMaps, Jobs; DELETE Jobs
  handlers.py  kopf watches FineTuneJobs (list/watch, patches its progress annotations) and
               indexes Jobs and Pods (list/watch); posts Events (create)
  rbac.py      the trainer's Role grants get/patch on finetunejobs/status: Kubernetes lets the
               operator create that Role only because it holds the same verbs itself
  serving/     ModelDeployments: kopf watches them (list/watch, progress annotations), GET and
               PATCH modeldeployments/status; server-side apply of Deployments, Services and
               the adapter ConfigMaps, list + delete of those no longer in the spec; watches
               Deployments
  finetune/    Kueue Workloads: indexed and watched (list/watch, read only) for the reason a
               queued Job waits, its admission and its eviction (spec.scheduling.queueName)
*/}}
{{- define "kubetune.namespacedRules" -}}
- apiGroups: [kubetune.io]
  resources: [finetunejobs]
  verbs: [get, list, watch, patch]
- apiGroups: [kubetune.io]
  resources: [finetunejobs/status]
  verbs: [get, patch]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [configmaps, services, serviceaccounts]
  verbs: [create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [create, patch]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
- apiGroups: [kubetune.io]
  resources: [modeldeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [kubetune.io]
  resources: [modeldeployments/status]
  verbs: [get, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [list, delete]
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, watch]
{{- end }}

{{/* Operator flags: scope, ports, peering. */}}
{{- define "kubetune.args" -}}
- operator
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- else }}
- --all-namespaces
{{- end }}
- --metrics-port={{ if .Values.metrics.enabled }}{{ .Values.metrics.port }}{{ else }}0{{ end }}
- --health-port={{ .Values.healthPort }}
- --workers={{ .Values.workers }}
{{- if include "kubetune.peering" . }}
- --peering={{ include "kubetune.peeringName" . }}
- --priority=oldest
{{- else }}
- --standalone
{{- end }}
{{- if .Values.verbose }}
- --verbose
{{- end }}
{{- range .Values.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}
