{{/* Names and labels, as `helm create` makes them. */}}
{{- define "jobworker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "jobworker.fullname" -}}
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

{{/* The web console's objects: the fullname with -web, within 63 characters. */}}
{{- define "jobworker.webname" -}}
{{- printf "%s-web" (include "jobworker.fullname" . | trunc 59 | trimSuffix "-") }}
{{- end }}

{{- define "jobworker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "jobworker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of the worker's pods; the console's add component: web. */}}
{{- define "jobworker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jobworker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "jobworker.webSelectorLabels" -}}
app.kubernetes.io/name: {{ include "jobworker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: web
{{- end }}

{{- define "jobworker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "jobworker.secretName" -}}
{{- default (include "jobworker.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* Whether the pods read a Secret at all: the chart's own, or an existing one. */}}
{{- define "jobworker.hasSecret" -}}
{{- if or .Values.existingSecret .Values.secrets }}true{{ end }}
{{- end }}

{{/*
SHUTDOWN_TIMEOUT in whole seconds (rounded up), parsed as the worker parses it
(entrypoints/config_values.py, parse_duration): a number with a unit, ms, s, m or h.
A number without a unit is refused there too.
*/}}
{{- define "jobworker.shutdownSeconds" -}}
{{- $text := trim (toString (default "30s" (get (.Values.config | default dict) "SHUTDOWN_TIMEOUT"))) }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?\\s*(ms|s|m|h)$" $text) }}
{{- fail (printf "config.SHUTDOWN_TIMEOUT %q is not a duration: write it with a unit, e.g. 30s, 2m or 500ms" $text) }}
{{- end }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $text | float64 }}
{{- $unit := regexReplaceAll "^[0-9.]+\\s*" $text "" }}
{{- $factor := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0) $unit }}
{{- mulf $number $factor | ceil | int }}
{{- end }}

{{/*
The grace period Kubernetes gives a pod between SIGTERM and SIGKILL: above
SHUTDOWN_TIMEOUT (the worker's own drain deadline), plus the --processes supervisor's
10 s when WORKER_PROCESSES > 1 (docs/operations.md, "Several worker processes").
*/}}
{{- define "jobworker.gracePeriodSeconds" -}}
{{- $shutdown := include "jobworker.shutdownSeconds" . | int }}
{{- $processes := default "1" (get (.Values.config | default dict) "WORKER_PROCESSES") | toString | atoi }}
{{- $minimum := ternary (add $shutdown 10) $shutdown (gt $processes 1) }}
{{- $given := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $given }}
{{- add $minimum .Values.shutdownGraceMarginSeconds }}
{{- else if le (int $given) $minimum }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above %d s: SHUTDOWN_TIMEOUT is %d s%s, and Kubernetes kills the pod when the grace period ends, before in-flight jobs are finished and committed" (int $given) $minimum $shutdown (ternary " plus 10 s for WORKER_PROCESSES > 1" "" (gt $processes 1))) }}
{{- else }}
{{- int $given }}
{{- end }}
{{- end }}

{{/* The image runs as 10001:10001 (Dockerfile); the same for both Deployments. */}}
{{- define "jobworker.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "jobworker.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Settings the pods read: the ConfigMap, then the Secret when there is one. */}}
{{- define "jobworker.envFrom" -}}
- configMapRef:
    name: {{ include "jobworker.fullname" . }}
{{- if include "jobworker.hasSecret" . }}
- secretRef:
    name: {{ include "jobworker.secretName" . }}
{{- end }}
{{- end }}
