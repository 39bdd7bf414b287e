{{/*
Names, labels, images and the operator's RBAC rules, shared by every template.
*/}}

{{/* The chart name (nameOverride wins), truncated to 63 characters. */}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name prefix of every object: fullnameOverride, else RELEASE-NAME, else RELEASE when it
already contains the chart name. Truncated to 40 characters so that suffixes such as "-operator"
keep object names within 63.
*/}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select one component's pods: call with (dict "ctx" $ "component" "operator"). */}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Standard labels of every object: call with (dict "ctx" $ "component" "operator"). */}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" .ctx }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: kubetune
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag}: call with (dict "ctx" $ "image" .Values.x.image). */}}
{{- define "kubetune.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{- define "kubetune.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (printf "%s-operator" (include "kubetune.fullname" .)) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name: name an existing ServiceAccount when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kubetune.workloadServiceAccountName" -}}
{{- if .Values.workloads.serviceAccount.create }}
{{- default (printf "%s-workload" (include "kubetune.fullname" .)) .Values.workloads.serviceAccount.name }}
{{- else }}
{{- required "workloads.serviceAccount.name: name an existing ServiceAccount when workloads.serviceAccount.create is false" .Values.workloads.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The namespaces where DatasetBuilds and FineTuneJobs can run, one per line: the watched namespaces
(or the release namespace when the operator watches all), then workloads.namespaces, without repeats.
These get the workload ServiceAccount and (with storage.create) the storage claim.
*/}}
{{- define "kubetune.workloadNamespaces" -}}
{{- $all := .Values.operator.watchNamespaces | default (list .Release.Namespace) }}
{{- $all = concat $all .Values.workloads.namespaces | uniq }}
{{- join "\n" $all }}
{{- end }}

{{/* True ("true") when the MLflow server keeps something on the storage volume. */}}
{{- define "kubetune.mlflowUsesStorage" -}}
{{- $m := .Values.mlflow }}
{{- if and $m.enabled (or (and (not $m.backendStore.uri) (not $m.backendStore.existingSecret)) (not $m.artifactsDestination)) }}true{{ end }}
{{- end }}

{{/* The MLflow server's in-cluster URL. */}}
{{- define "kubetune.mlflowUrl" -}}
{{- printf "http://%s-mlflow.%s.svc:%d" (include "kubetune.fullname" .) .Release.Namespace (int .Values.mlflow.service.port) }}
{{- end }}

{{/*
The pod security context of every pod the chart creates (Pod Security "restricted").
*/}}
{{- define "kubetune.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.securityContext.runAsUser | int64 }}
runAsGroup: {{ .Values.securityContext.runAsGroup | int64 }}
fsGroup: {{ .Values.securityContext.fsGroup | int64 }}
fsGroupChangePolicy: {{ .Values.securityContext.fsGroupChangePolicy }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The security context of every container the chart creates (Pod Security "restricted", plus a
read-only root filesystem: each pod mounts a writable emptyDir at /tmp).
*/}}
{{- define "kubetune.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The operator's permissions, one rule per (API group, resources), rendered both into the ClusterRole
(the operator watches every namespace) and into the Role of each watched namespace
(operator.watchNamespaces). Keep them least-privilege: every verb here is one the operator uses.
*/}}
{{- define "kubetune.operatorRules" -}}
# The operator watches DatasetBuilds (list, watch), reads the one a FineTuneJob waits for (get), and
# patches them: kopf keeps its handler progress and last-handled spec in annotations.
- apiGroups: ["kubetune.dev"]
  resources: ["datasetbuilds"]
  verbs: ["get", "list", "watch", "patch"]
# The same for FineTuneJobs; get: when a Job moves, the operator reads the FineTuneJob that owns it.
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobs"]
  verbs: ["get", "list", "watch", "patch"]
# The operator writes status (phase, conditions, jobName, output) through the status subresource.
- apiGroups: ["kubetune.dev"]
  resources: ["datasetbuilds/status"]
  verbs: ["patch"]
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobs/status"]
  verbs: ["patch"]
# The ConfigMaps and Jobs the operator creates carry an owner reference with blockOwnerDeletion to the
# resource; where the OwnerReferencesPermissionEnforcement admission plugin is on, creating them needs
# update on the owner's finalizers subresource (no request is made with it).
- apiGroups: ["kubetune.dev"]
  resources: ["datasetbuilds/finalizers"]
  verbs: ["update"]
- apiGroups: ["kubetune.dev"]
  resources: ["finetunejobs/finalizers"]
  verbs: ["update"]
# One ConfigMap per resource holds its validated spec (spec.json) for the pod.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create"]
# A FineTuneJob on several pods (distributed.numNodes > 1) gets a headless Service: its pods' stable DNS
# names, pod 0's the rendezvous of torchrun on every pod.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create"]
# One Job per resource runs datagen or trainer; the operator watches Jobs to copy their outcome into
# the resource's status, and kopf records the last-handled state of a Job in its annotations (patch);
# spec.suspend is set through patch too. With deletionPolicy Delete, a clean-up Job removes the output
# folder, and the operator reads it and the resource's Job (get) until it is done.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "patch"]
# When a Job ends, the operator reads its pods' termination messages (why it failed, or what it made:
# the dataset digest, the registered model version) into the status.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# While a Job runs, the operator reads the end of its pod's log for the last progress record (the pods
# have no API token, so they cannot write status themselves).
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# kopf posts Events (core/v1) about handler progress and phase changes.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
Checks of combinations values.schema.json cannot express; each fails with the key to fix.
*/}}
{{- define "kubetune.validate" -}}
{{- $v := .Values }}
{{- if and $v.mlflow.enabled $v.mlflow.trackingUri }}
{{- fail "mlflow.trackingUri names an external MLflow server, but mlflow.enabled deploys one: set only one of them" }}
{{- end }}
{{- if and $v.mlflow.backendStore.uri $v.mlflow.backendStore.existingSecret }}
{{- fail "mlflow.backendStore: set uri or existingSecret, not both" }}
{{- end }}
{{- if $v.operator.watchNamespaces }}
{{- range $v.workloads.namespaces }}
{{- if not (has . $v.operator.watchNamespaces) }}
{{- fail (printf "workloads.namespaces: %q is not in operator.watchNamespaces %v; the operator would never run a Job there" . $v.operator.watchNamespaces) }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (not $v.operator.serviceAccount.create) (not $v.operator.serviceAccount.name) }}
{{- fail "operator.serviceAccount.name: name an existing ServiceAccount when operator.serviceAccount.create is false" }}
{{- end }}
{{- if and (not $v.workloads.serviceAccount.create) (not $v.workloads.serviceAccount.name) }}
{{- fail "workloads.serviceAccount.name: name an existing ServiceAccount when workloads.serviceAccount.create is false" }}
{{- end }}
{{- range $pod := list "datagen" "trainer" }}
{{- $limits := (index $v.workloads $pod).resources.limits | default dict }}
{{- $requests := (index $v.workloads $pod).resources.requests | default dict }}
{{- range $name, $q := $requests }}
{{- if and (hasPrefix "nvidia.com/" $name) (ne (toString $q) (toString (index $limits $name | default ""))) }}
{{- fail (printf "workloads.%s.resources: extended resource %s must have equal requests and limits (requests %v, limits %v); set it under limits" $pod $name $q (index $limits $name | default "none")) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
