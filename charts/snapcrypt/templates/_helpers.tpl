{{/* Name of the chart, or nameOverride. */}}
{{- define "snapcrypt.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects: "<release>" when it contains the chart name, else
"<release>-<chart>"; fullnameOverride wins. */}}
{{- define "snapcrypt.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "snapcrypt.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object but the component. */}}
{{- define "snapcrypt.commonLabels" -}}
helm.sh/chart: {{ include "snapcrypt.chart" . }}
app.kubernetes.io/name: {{ include "snapcrypt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: snapcrypt
{{- end -}}

{{/* Labels of the operator's objects. */}}
{{- define "snapcrypt.labels" -}}
{{ include "snapcrypt.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* The operator's full name: Deployment, ServiceAccount, ClusterRole and binding. */}}
{{- define "snapcrypt.operatorName" -}}
{{- printf "%s-operator" (include "snapcrypt.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{/* Labels that select the operator's pods (never change them in an upgrade: a Deployment's
selector is immutable). */}}
{{- define "snapcrypt.selectorLabels" -}}
app.kubernetes.io/name: {{ include "snapcrypt.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "snapcrypt.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "snapcrypt.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name the operator's existing ServiceAccount" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "snapcrypt.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "snapcrypt.agentImage" -}}
{{- default (include "snapcrypt.image" .) .Values.agent.image -}}
{{- end -}}

{{/* Settings that no schema can check alone. */}}
{{- define "snapcrypt.validate" -}}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) -}}
{{- fail (printf "replicas: %d needs leaderElection.enabled: true: without leader election every copy of the operator reconciles the same objects (keep replicas: 1)" (int .Values.replicas)) -}}
{{- end -}}
{{- if and .Values.podDisruptionBudget (gt (int .Values.replicas) 1) (ge (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicas)) -}}
{{- fail (printf "podDisruptionBudget.minAvailable: %d must be less than replicas: %d, or no node could ever be drained" (int .Values.podDisruptionBudget.minAvailable) (int .Values.replicas)) -}}
{{- end -}}
{{- end -}}

{{/* The namespace the operator watches: operator.watchNamespace, else the release's own; empty
with operator.clusterWide (every namespace). */}}
{{- define "snapcrypt.watchNamespace" -}}
{{- if and .Values.operator.clusterWide .Values.operator.watchNamespace -}}
{{- fail "operator.clusterWide and operator.watchNamespace: set one (clusterWide watches every namespace)" -}}
{{- end -}}
{{- if not .Values.operator.clusterWide -}}
{{- default .Release.Namespace .Values.operator.watchNamespace -}}
{{- end -}}
{{- end -}}
