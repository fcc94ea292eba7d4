{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "adc-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's objects: the release name when it already contains the chart name,
else RELEASE-CHART. Truncated to 63 characters (DNS label).
*/}}
{{- define "adc-operator.fullname" -}}
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

{{- define "adc-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "adc-operator.labels" -}}
helm.sh/chart: {{ include "adc-operator.chart" . }}
{{ include "adc-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: adc-operator
{{- end }}

{{/* Labels that select the operator's pods; never change them (Deployment selectors are immutable). */}}
{{- define "adc-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "adc-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "adc-operator.serviceAccountName" -}}
{{- default (include "adc-operator.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "adc-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* Leader election is on with more than one replica, or when asked for; sharding replaces it. */}}
{{- define "adc-operator.leaderElection" -}}
{{- if and (not .Values.sharding.enabled) (or (gt (int .Values.replicas) 1) .Values.leaderElection.enabled) }}true{{ end }}
{{- end }}

{{/* Sharding: every replica holds a share of the clouds, by a Lease per cloud. */}}
{{- define "adc-operator.sharding" -}}
{{- if .Values.sharding.enabled }}
{{- if lt (int .Values.replicas) 2 }}
{{- fail "sharding.enabled needs replicas >= 2: one replica holds every cloud anyway (leave sharding off)" }}
{{- end }}true
{{- end }}
{{- end }}
