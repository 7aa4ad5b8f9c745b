{{/* Names and labels. */}}
{{- define "ferrum-infer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ferrum-infer.fullname" -}}
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

{{- define "ferrum-infer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferrum-infer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ferrum-infer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ferrum-infer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ferrum-infer
{{- end -}}

{{/* Labels of one component; call with (dict "root" $ "component" "worker"). */}}
{{- define "ferrum-infer.componentLabels" -}}
{{ include "ferrum-infer.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ferrum-infer.componentSelectorLabels" -}}
{{ include "ferrum-infer.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* repository:tag; call with (dict "root" $ "override" .Values.worker.image) or (dict "root" $). */}}
{{- define "ferrum-infer.image" -}}
{{- $override := .override | default dict -}}
{{- $repository := $override.repository | default .root.Values.image.repository -}}
{{- $tag := $override.tag | default .root.Values.image.tag | default "cpu" -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}

{{/* The model name clients use: model.name, else the last part of model.path. */}}
{{- define "ferrum-infer.servedModelName" -}}
{{- .Values.model.name | default (base (trimSuffix "/" .Values.model.path)) -}}
{{- end -}}

{{- define "ferrum-infer.schedulerAddr" -}}
{{- printf "%s-scheduler:%d" (include "ferrum-infer.fullname" .) (int .Values.scheduler.grpcPort) -}}
{{- end -}}

{{/* True when the chart's own Secret holds the API keys. */}}
{{- define "ferrum-infer.chartSecretHoldsApiKeys" -}}
{{- if and .Values.auth.apiKeys (not .Values.auth.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/* True when the chart's own Secret holds the external Redis URL. */}}
{{- define "ferrum-infer.chartSecretHoldsRedisUrl" -}}
{{- if and (not .Values.redis.enabled) .Values.externalRedis.url (not .Values.externalRedis.existingSecret) -}}true{{- end -}}
{{- end -}}

{{/* The FERRUM_INFER_REDIS_URL env entry of the scheduler and the workers. */}}
{{- define "ferrum-infer.redisUrlEnv" -}}
- name: FERRUM_INFER_REDIS_URL
{{- if .Values.redis.enabled }}
  value: {{ printf "redis://%s-redis:%d/0" (include "ferrum-infer.fullname" .) (int .Values.redis.port) | quote }}
{{- else if .Values.externalRedis.existingSecret }}
  valueFrom:
    secretKeyRef:
      name: {{ .Values.externalRedis.existingSecret }}
      key: {{ .Values.externalRedis.existingSecretKey }}
{{- else if .Values.externalRedis.url }}
  valueFrom:
    secretKeyRef:
      name: {{ include "ferrum-infer.fullname" . }}
      key: FERRUM_INFER_REDIS_URL
{{- else }}
{{- fail "redis.enabled is false: set externalRedis.url or externalRedis.existingSecret" }}
{{- end }}
{{- end -}}

{{/* Pod-level settings every component shares. */}}
{{- define "ferrum-infer.podCommon" -}}
automountServiceAccountToken: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
