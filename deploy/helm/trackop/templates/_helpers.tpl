{{/* The chart's name, or nameOverride. */}}
{{- define "trackop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object this chart makes: fullnameOverride, else the release name when it
already contains the chart's name, else "<release>-<chart>". 50 characters at most, so that
"<fullname>-webhook-tls" and "<fullname>-selfsigned" stay valid names.
*/}}
{{- define "trackop.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 50 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "trackop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's pods: stable across upgrades. */}}
{{- define "trackop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trackop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The standard labels on every object of the chart. */}}
{{- define "trackop.labels" -}}
helm.sh/chart: {{ include "trackop.chart" . }}
{{ include "trackop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trackop
{{- end }}

{{- define "trackop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trackop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "trackop.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The webhook Service's name (the operator's --webhook-service). */}}
{{- define "trackop.webhookService" -}}
{{- printf "%s-webhook" (include "trackop.fullname" .) }}
{{- end }}

{{/* The Secret cert-manager fills (the operator's --webhook-cert-secret). */}}
{{- define "trackop.webhookTLSSecret" -}}
{{- printf "%s-webhook-tls" (include "trackop.fullname" .) }}
{{- end }}

{{/* kopf's peering object name (the operator's --peering-name). */}}
{{- define "trackop.peeringName" -}}
{{- include "trackop.fullname" . }}
{{- end }}

{{/* Refuse value combinations that cannot work, saying why. */}}
{{- define "trackop.validate" -}}
{{- if and .Values.webhook.certManager.enabled (not .Values.webhook.enabled) }}
{{- fail "webhook.certManager.enabled needs webhook.enabled: the certificate is for the webhook Service" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled: the ServiceMonitor scrapes the metrics Service" }}
{{- end }}
{{- end }}
