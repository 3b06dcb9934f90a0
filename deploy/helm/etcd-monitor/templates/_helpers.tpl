{{/*
Names, labels, images and the addresses the parts find each other by.
*/}}

{{/* The name of a part: <namePrefix>-<part>, e.g. etcdmon-agent. Argument: (list $ "agent"). */}}
{{- define "etcd-monitor.fullname" -}}
{{- $ctx := index . 0 -}}
{{- printf "%s-%s" $ctx.Values.namePrefix (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "etcd-monitor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object. Argument: $. */}}
{{- define "etcd-monitor.commonLabels" -}}
app.kubernetes.io/part-of: etcd-monitor
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "etcd-monitor.chart" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Labels of a component's objects. Argument: (dict "ctx" $ "component" "agent"),
with "bundled" true for the bundled ClickHouse and NATS, which carry no
app.kubernetes.io/version (theirs is not etcd-monitor's).
*/}}
{{- define "etcd-monitor.labels" -}}
app.kubernetes.io/name: {{ include "etcd-monitor.fullname" (list .ctx .component) }}
app.kubernetes.io/component: {{ .component }}
{{- if not .bundled }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
{{- end }}
{{ include "etcd-monitor.commonLabels" .ctx }}
{{- end -}}

{{/* The labels a component's Service, budget and policies select its pods by. */}}
{{- define "etcd-monitor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "etcd-monitor.fullname" (list .ctx .component) }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{/* metadata.annotations of every object, when there are any (indented for metadata). Argument: $. */}}
{{- define "etcd-monitor.annotations" -}}
{{- with .Values.commonAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
{{- end }}
{{- end -}}

{{/* One of etcd-monitor's images. Argument: (dict "ctx" $ "image" .Values.agent.image). */}}
{{- define "etcd-monitor.image" -}}
{{- $g := .ctx.Values.image -}}
{{- $tag := .image.tag | default $g.tag | default .ctx.Chart.AppVersion -}}
{{- if $g.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $g.registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* spec.imagePullSecrets of a pod, when there are any (indented for a pod template's spec). Argument: $. */}}
{{- define "etcd-monitor.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
{{- end }}
{{- end -}}

{{/*
The name of a Secret: the existing one named in values, else <namePrefix>-<part>
(made by the chart with create: true, by you otherwise). Argument:
(list $ .Values.agent.credentials "agent").
*/}}
{{- define "etcd-monitor.secretName" -}}
{{- $ctx := index . 0 -}}
{{- $v := index . 1 -}}
{{- if and $v.create $v.existingSecret -}}
{{- fail (printf "%s: existingSecret and create: true exclude each other" (index . 2)) -}}
{{- end -}}
{{- $v.existingSecret | default (include "etcd-monitor.fullname" (list $ctx (index . 2))) -}}
{{- end -}}

{{/* The collector's in-cluster host name. */}}
{{- define "etcd-monitor.collectorHost" -}}
{{- printf "%s.%s.svc" (include "etcd-monitor.fullname" (list . "collector")) .Release.Namespace -}}
{{- end -}}

{{/* upstream.address of the agents. */}}
{{- define "etcd-monitor.collectorAddress" -}}
{{- .Values.agent.collectorAddress | default (printf "https://%s:7070" (include "etcd-monitor.collectorHost" .)) -}}
{{- end -}}

{{/* storage.url of the collector and the alerter. */}}
{{- define "etcd-monitor.clickhouseUrl" -}}
{{- $c := .Values.clickhouse -}}
{{- if $c.bundled.enabled -}}
{{- printf "clickhouse://%s.%s.svc:8123/%s" (include "etcd-monitor.fullname" (list . "clickhouse")) .Release.Namespace $c.database -}}
{{- else -}}
{{- $c.external.url | default (printf "clickhouse://clickhouse.%s.svc:8123/%s" .Release.Namespace $c.database) -}}
{{- end -}}
{{- end -}}

{{/* alerting.jetstream.url of the collector, nats.url of the alerter. */}}
{{- define "etcd-monitor.natsUrl" -}}
{{- if .Values.nats.bundled.enabled -}}
{{- printf "nats://%s.%s.svc:4222" (include "etcd-monitor.fullname" (list . "nats")) .Release.Namespace -}}
{{- else -}}
{{- .Values.nats.external.url | default (printf "nats://nats.%s.svc:4222" .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* The TOML lines of [alerting.jetstream.auth] / [nats.auth], empty without TLS or a login. */}}
{{- define "etcd-monitor.natsAuth" -}}
{{- $n := .Values.nats.external -}}
{{- if not .Values.nats.bundled.enabled -}}
{{- if $n.tls.existingSecret }}
ca_file = "/var/run/secrets/etcdmon/nats-tls/ca.crt"
{{- if $n.tls.clientCertificate }}
cert_file = "/var/run/secrets/etcdmon/nats-tls/tls.crt"
key_file = "/var/run/secrets/etcdmon/nats-tls/tls.key"
{{- end }}
{{- end }}
{{- if $n.auth.existingSecret }}
{{- if $n.auth.user }}
user = {{ $n.auth.user | toJson }}
password_file = "/var/run/secrets/etcdmon/nats/password"
{{- else }}
token_file = "/var/run/secrets/etcdmon/nats/token"
{{- end }}
{{- end }}
{{- end -}}
{{- end -}}

{{/*
The volumes (mode "volumes") or mounts (mode "mounts") of the store's and NATS'
secrets, shared by the collector and the alerter. Argument: (dict "ctx" $ "mode" "mounts").
*/}}
{{- define "etcd-monitor.storeVolumes" -}}
{{- $ := .ctx -}}
{{- $external := list -}}
{{- if and (not $.Values.clickhouse.bundled.enabled) $.Values.clickhouse.external.tls.existingSecret -}}
{{- $external = append $external (list "clickhouse-tls" $.Values.clickhouse.external.tls.existingSecret) -}}
{{- end -}}
{{- if not $.Values.nats.bundled.enabled -}}
{{- if $.Values.nats.external.tls.existingSecret -}}
{{- $external = append $external (list "nats-tls" $.Values.nats.external.tls.existingSecret) -}}
{{- end -}}
{{- if $.Values.nats.external.auth.existingSecret -}}
{{- $external = append $external (list "nats" $.Values.nats.external.auth.existingSecret) -}}
{{- end -}}
{{- end -}}
{{- if eq .mode "mounts" }}
- name: clickhouse
  mountPath: /var/run/secrets/etcdmon/clickhouse
  readOnly: true
{{- range $external }}
- name: {{ index . 0 }}
  mountPath: /var/run/secrets/etcdmon/{{ index . 0 }}
  readOnly: true
{{- end }}
{{- else }}
- name: clickhouse
  secret:
    secretName: {{ include "etcd-monitor.secretName" (list $ $.Values.clickhouse.auth "clickhouse") }}
    defaultMode: 0440
{{- range $external }}
- name: {{ index . 0 }}
  secret:
    secretName: {{ index . 1 }}
    defaultMode: 0440
{{- end }}
{{- end }}
{{- end -}}

{{/* minAvailable of a PodDisruptionBudget when set, else maxUnavailable. Argument: its values. */}}
{{- define "etcd-monitor.pdbSpec" -}}
{{- if not (kindIs "invalid" .minAvailable) -}}
minAvailable: {{ .minAvailable }}
{{- else -}}
maxUnavailable: {{ .maxUnavailable | default 1 }}
{{- end -}}
{{- end -}}

{{/* The collector's and the alerter's egress rules to ClickHouse and NATS (indented for spec.egress). Argument: $. */}}
{{- define "etcd-monitor.storeEgress" }}
{{- $ := . }}
{{- $np := .Values.networkPolicy }}
    # ClickHouse: {{ if .Values.clickhouse.bundled.enabled }}the bundled one.{{ else }}HTTP (clickhouse://) and HTTPS (clickhouses://) ports.{{ end }}
    - ports:
        {{- if .Values.clickhouse.bundled.enabled }}
        - port: 8123
          protocol: TCP
      to:
        - podSelector:
            matchLabels:
              {{- include "etcd-monitor.selectorLabels" (dict "ctx" $ "component" "clickhouse") | nindent 14 }}
        {{- else }}
        {{- range $np.clickhousePorts }}
        - port: {{ int64 . }}
          protocol: TCP
        {{- end }}
        {{- end }}
    # NATS JetStream: alert candidates.
    - ports:
        {{- if .Values.nats.bundled.enabled }}
        - port: 4222
          protocol: TCP
      to:
        - podSelector:
            matchLabels:
              {{- include "etcd-monitor.selectorLabels" (dict "ctx" $ "component" "nats") | nindent 14 }}
        {{- else }}
        {{- range $np.natsPorts }}
        - port: {{ int64 . }}
          protocol: TCP
        {{- end }}
        {{- end }}
{{- end }}
