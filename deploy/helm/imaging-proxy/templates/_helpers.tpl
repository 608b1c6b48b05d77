{{/* The release's full name: the release name, or release-chart when they differ. */}}
{{- define "imaging-proxy.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "imaging-proxy.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "imaging-proxy.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end -}}

{{- define "imaging-proxy.redisSelector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end -}}

{{- define "imaging-proxy.serviceAccountName" -}}
{{- default (include "imaging-proxy.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "imaging-proxy.tlsSecret" -}}
{{- default (printf "%s-tls" (include "imaging-proxy.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{- define "imaging-proxy.redisSecret" -}}
{{- default (printf "%s-redis" (include "imaging-proxy.fullname" .)) .Values.redis.auth.secretName -}}
{{- end -}}

{{- define "imaging-proxy.redisHost" -}}
{{- if and .Values.redis.enabled .Values.redis.auth.username -}}
{{- fail "redis.auth.username is for an external Redis: the chart's Redis has the default user only" -}}
{{- end -}}
{{- if .Values.redis.enabled -}}
{{- printf "%s-redis" (include "imaging-proxy.fullname" .) -}}
{{- else -}}
{{- required "redis.external.host is required when redis.enabled is false" .Values.redis.external.host -}}
{{- end -}}
{{- end -}}

{{- define "imaging-proxy.redisPort" -}}
{{- if .Values.redis.enabled }}{{ .Values.redis.port | int }}{{ else }}{{ .Values.redis.external.port | int }}{{ end -}}
{{- end -}}

{{/* The journal's Redis URL; $(REDIS_PASSWORD) is expanded by the kubelet from the Secret. */}}
{{- define "imaging-proxy.journalUrl" -}}
{{- $scheme := ternary "rediss" "redis" .Values.redis.tls.enabled -}}
{{- $auth := ternary (printf "%s:$(REDIS_PASSWORD)@" .Values.redis.auth.username) "" .Values.redis.auth.enabled -}}
{{- $query := ternary "?ssl_ca_certs=/etc/imaging-proxy/redis-tls/ca.crt" "" .Values.redis.tls.enabled -}}
{{- printf "%s://%s%s:%s/%d%s" $scheme $auth (include "imaging-proxy.redisHost" .) (include "imaging-proxy.redisPort" .) (.Values.redis.db | int) $query -}}
{{- end -}}

{{/* Policy files shipped with the chart (files/policies/, a copy of policies/ that
     `make manifests` refreshes): ConfigMap keys are flat, so "/" becomes "_". */}}
{{- define "imaging-proxy.policyKey" -}}
{{- trimPrefix "files/policies/" . | replace "/" "_" -}}
{{- end -}}
