{{/*
Checks JSON Schema cannot express (or cannot explain): each fails the render with a message that
says what to change. Included once, by the Deployment.
*/}}
{{- define "voxgate.validate" -}}
{{- $managed := dict
  "VOXGATE_HOST" "the chart listens on 0.0.0.0"
  "VOXGATE_PORT" "set containerPort"
  "VOXGATE_INSTANCE_ID" "the chart uses the pod name"
  "VOXGATE_SHUTDOWN_GRACE_SECONDS" "set drain.graceSeconds"
  "VOXGATE_ABANDON_WAIT_SECONDS" "set drain.abandonWaitSeconds"
  "VOXGATE_SPOOL_DIR" "set spool.mountPath"
  "VOXGATE_POLICY_FILE" "put the tiers YAML in tiers"
  "VOXGATE_TLS_CERT_FILE" "set tls.termination"
  "VOXGATE_TLS_KEY_FILE" "set tls.termination"
  "VOXGATE_UPSTREAM_CA_FILE" "set tls.upstreamCA" -}}
{{- $secret := list "VOXGATE_DATABASE_URL" "VOXGATE_REDIS_URL" "VOXGATE_OPENAI_API_KEY" "VOXGATE_SAFETY_ID_SECRET" "VOXGATE_ADMIN_JWT_SECRET" "VOXGATE_ADMIN_JWT_PUBLIC_KEY" "VOXGATE_DATABASE_MIGRATION_URL" "VOXGATE_ALERT_WEBHOOK_SECRET" "VOXGATE_OPENAI_WEBHOOK_SECRET" "VOXGATE_METRICS_TOKEN" -}}
{{- range $name, $_ := .Values.env -}}
{{- if has $name $secret -}}
{{- fail (printf "env.%s: a secret never goes in plain env; put it in secrets.values or in secrets.existingSecret" $name) -}}
{{- end -}}
{{- with get $managed $name -}}
{{- fail (printf "env.%s is set by the chart: %s" $name .) -}}
{{- end -}}
{{- end -}}
{{- if has (toString .Values.rollingUpdate.maxSurge) (list "0" "0%") -}}
{{- fail "rollingUpdate.maxSurge must be above 0: maxUnavailable is always 0, so a rollout needs room for an extra pod" -}}
{{- end -}}
{{- $a := .Values.autoscaling -}}
{{- if and $a.enabled (lt (int $a.maxReplicas) (int $a.minReplicas)) -}}
{{- fail (printf "autoscaling.maxReplicas (%d) must be >= autoscaling.minReplicas (%d)" (int $a.maxReplicas) (int $a.minReplicas)) -}}
{{- end -}}
{{- if and (eq .Values.spool.type "persistentVolumeClaim") (or $a.enabled (gt (int .Values.replicaCount) 1)) -}}
{{- fail "spool.type=persistentVolumeClaim needs replicaCount: 1 and autoscaling off: the ledger journal is one file per process and must not be shared (docs/operations.md, \"The spool\")" -}}
{{- end -}}
{{- end -}}
