{{/*
Names and labels (the usual Helm conventions), the metrics port derived from the exporter's own
`[metrics] listen`, and the TOML renderer for the exporter configuration.
*/}}

{{- define "uprobe-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-qualified name, at most 63 characters (a DNS label). */}}
{{- define "uprobe-exporter.fullname" -}}
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

{{- define "uprobe-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "uprobe-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "uprobe-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "uprobe-exporter.labels" -}}
helm.sh/chart: {{ include "uprobe-exporter.chart" . }}
{{ include "uprobe-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: exporter
{{- end }}

{{- define "uprobe-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "uprobe-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "uprobe-exporter.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* Where the ConfigMap's config.toml is mounted; the container's --config argument. */}}
{{- define "uprobe-exporter.configPath" -}}
/etc/uprobe-exporter/config.toml
{{- end }}

{{/*
The port of `config.metrics.listen` (":9527", "0.0.0.0:9527", "[::]:9527"): the container port,
the probes' port and the Service's target all come from it, so they cannot disagree with the
exporter. A loopback listen address fails the render: the kubelet's probes and Prometheus connect to
the pod's IP.
*/}}
{{- define "uprobe-exporter.metricsPort" -}}
{{- $listen := toString (.Values.config.metrics.listen | default ":9527") }}
{{- if regexMatch "^(127\\.|localhost:|\\[::1\\]:)" $listen }}
{{- fail (printf "config.metrics.listen %q is a loopback address: the kubelet's probes and Prometheus reach the pod's IP; use \":PORT\"" $listen) }}
{{- end }}
{{- regexFind "[0-9]+$" $listen }}
{{- end }}

{{/* "HTTPS" when the exporter serves /metrics over TLS (config.metrics.tls_cert_file), else "HTTP". */}}
{{- define "uprobe-exporter.metricsScheme" -}}
{{- if .Values.config.metrics.tls_cert_file }}HTTPS{{ else }}HTTP{{ end }}
{{- end }}

{{/*
The kubelet's probe handler: GET /metrics on the metrics port. With client-certificate
authentication (tls_client_ca_file) the kubelet, which presents no certificate, cannot GET, so the
probe only checks that the port accepts connections.
*/}}
{{- define "uprobe-exporter.probeHandler" -}}
{{- if .Values.config.metrics.tls_client_ca_file -}}
tcpSocket:
  port: metrics
{{- else -}}
httpGet:
  path: /metrics
  port: metrics
  scheme: {{ include "uprobe-exporter.metricsScheme" . }}
{{- end }}
{{- end }}

{{/*
The container's securityContext for securityContext.mode (see values.yaml and README.md).
*/}}
{{- define "uprobe-exporter.securityContext" -}}
{{- $sc := .Values.securityContext }}
{{- if eq $sc.mode "privileged" -}}
privileged: true
runAsUser: 0
runAsGroup: 0
runAsNonRoot: false
readOnlyRootFilesystem: true
{{- else if eq $sc.mode "capabilities" -}}
privileged: false
runAsUser: 0
runAsGroup: 0
runAsNonRoot: false
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
  {{- with $sc.capabilities.add }}
  add:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- with $sc.appArmorProfile }}
appArmorProfile:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $sc.seccompProfile }}
seccompProfile:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $sc.seLinuxOptions }}
seLinuxOptions:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- else }}
{{- fail (printf "securityContext.mode must be privileged or capabilities, not %q" $sc.mode) }}
{{- end }}
{{- end }}

{{/*
TOML rendering. The configuration lives in values.yaml as YAML that mirrors the TOML key for key;
these helpers turn it back into TOML:

  uprobe-exporter.toml.value  one value: a string (quoted, escaped), a number, a boolean, an array
                              of values, or an inline table ({ prompt = "+0(%di):string" }) for
                              args and return_args
  uprobe-exporter.toml.key    a bare key when it may be one ([A-Za-z0-9_-]+), else a quoted key
  uprobe-exporter.toml.pairs  the `key = value` lines of a table, keys sorted, nulls skipped

Scalars go through toJson: a JSON string is a TOML basic string (TOML has the same escapes, \uXXXX
included, except that it also forbids a raw DEL, escaped here), JSON numbers are TOML numbers (a
whole number such as 4096 stays an integer, 0.00001 a float) and true/false are the same words.
*/}}
{{- define "uprobe-exporter.toml.value" -}}
{{- $kind := kindOf . }}
{{- if eq $kind "slice" }}
{{- $items := list }}
{{- range . }}
{{- $items = append $items (include "uprobe-exporter.toml.value" .) }}
{{- end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if eq $kind "map" }}
{{- $items := list }}
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}
{{- $items = append $items (printf "%s = %s" (include "uprobe-exporter.toml.key" $key) (include "uprobe-exporter.toml.value" $value)) }}
{{- end }}
{{- end }}
{{- if $items }}{{ printf "{ %s }" (join ", " $items) }}{{ else }}{}{{ end }}
{{- else }}
{{- toJson . | replace "\u007f" "\\u007f" }}
{{- end }}
{{- end }}

{{- define "uprobe-exporter.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "uprobe-exporter.toml.pairs" -}}
{{- range $key, $value := . }}
{{- if not (kindIs "invalid" $value) }}
{{ include "uprobe-exporter.toml.key" $key }} = {{ include "uprobe-exporter.toml.value" $value }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The fields a ServiceMonitor endpoint and a PodMonitor podMetricsEndpoint share; called with
(dict "root" $ "monitor" .Values.serviceMonitor) or the podMonitor values.
*/}}
{{- define "uprobe-exporter.scrapeEndpoint" -}}
{{- $m := .monitor -}}
path: /metrics
scheme: {{ include "uprobe-exporter.metricsScheme" .root | lower }}
interval: {{ $m.interval }}
{{- with $m.scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- if $m.honorLabels }}
honorLabels: true
{{- end }}
{{- with $m.tlsConfig }}
tlsConfig:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $m.relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $m.metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Where the pod log directory is mounted: podLogs.path inside hostRoot.mountPath when hostRoot is enabled
(exporter.pods_dir is read inside host_root), else at podLogs.path.
*/}}
{{- define "uprobe-exporter.podLogsMount" -}}
{{- if .Values.hostRoot.enabled }}{{ trimSuffix "/" .Values.hostRoot.mountPath }}{{ end }}{{ .Values.podLogs.path }}
{{- end }}

{{/*
The stop: the number of kernel events of config.probes (1 per probe, 2 with return = true; a discover
probe's for each of up to exporter.discover_files_max files, 16 unless set), the
grace period the kubelet gives a stopping pod (terminationGracePeriodSeconds, or 10 + ceil(events /
10): 100 ms per event, the kernel needing ≈60 ms, plus 10 s for the rest) and the exporter's
stop_budget_seconds (3 s less, unless set; the grace period then covers it).
*/}}
{{- define "uprobe-exporter.eventCount" -}}
{{- $n := 0 }}
{{- $files := (.Values.config.exporter | default dict).discover_files_max | default 16 | int }}
{{- range .Values.config.probes }}
{{- $per := ternary 2 1 (eq (toString (get . "return")) "true") }}
{{- if hasKey . "discover" }}{{ $per = mul $per $files }}{{ end }}
{{- $n = add $n $per }}
{{- end }}
{{- $n }}
{{- end }}

{{- define "uprobe-exporter.gracePeriod" -}}
{{- $events := include "uprobe-exporter.eventCount" . | int }}
{{- $grace := .Values.terminationGracePeriodSeconds | default (add 10 (div (add $events 9) 10)) | int }}
{{- with (.Values.config.exporter | default dict).stop_budget_seconds }}
{{- $grace = max $grace (add (ceil .) 3) }}
{{- end }}
{{- $grace }}
{{- end }}

{{- define "uprobe-exporter.stopBudget" -}}
{{- (.Values.config.exporter | default dict).stop_budget_seconds | default (sub (include "uprobe-exporter.gracePeriod" . | int) 3) }}
{{- end }}
