{{/* Names, labels and the pieces the server Deployment and the migration Job share. */}}

{{- define "voxgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "voxgate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "voxgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "voxgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "voxgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "voxgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The server pods only (the NetworkPolicy, PDB and Service select these, not the Job's pods). */}}
{{- define "voxgate.serverSelectorLabels" -}}
{{ include "voxgate.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "voxgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "voxgate.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "voxgate.secretName" -}}
{{- default (include "voxgate.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "voxgate.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds: long enough that Kubernetes never SIGKILLs a pod while it drains.
Derived from the drain settings unless set; an explicit value too short to cover preStop + grace +
abandon wait + 15 s (ledger flush and connection close) is refused.
*/}}
{{- define "voxgate.terminationGracePeriodSeconds" -}}
{{- $d := .Values.drain -}}
{{- $needed := add $d.preStopSeconds $d.graceSeconds $d.abandonWaitSeconds -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add $needed $d.shutdownMarginSeconds -}}
{{- else -}}
{{- $tgp := int .Values.terminationGracePeriodSeconds -}}
{{- if lt $tgp (add $needed 15 | int) -}}
{{- fail (printf "terminationGracePeriodSeconds=%d is too short to drain: it must be at least drain.preStopSeconds + drain.graceSeconds + drain.abandonWaitSeconds + 15 = %d (or leave it empty to derive it)" $tgp (add $needed 15 | int)) -}}
{{- end -}}
{{- $tgp -}}
{{- end -}}
{{- end -}}

{{/* The restricted Pod Security profile: pod level. */}}
{{- define "voxgate.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
{{- with .Values.podSecurityContext.fsGroup }}
fsGroup: {{ . }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The restricted Pod Security profile: container level; the root filesystem is read-only. */}}
{{- define "voxgate.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
privileged: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* A variable from the Secret; optional ones may be missing from an existing Secret. */}}
{{- define "voxgate.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}
