{{/*
The pod template of a Ray node group, one for the head and for every worker group. Call with
(dict "root" $ "group" <.Values.head or a worker group> "workerGroup" <its name>); without
workerGroup it is the head's: the Ray head ports, the driver-log container, and the
ServiceAccount token volume that only the autoscaler sidecar mounts.
*/}}
{{- define "batch-inference.rayPodTemplate" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
{{- $group := .group -}}
{{- $workerGroup := .workerGroup -}}
{{- $head := not $workerGroup -}}
{{- $annotations := deepCopy ($values.podAnnotations | default dict) }}
{{- if ternary $values.disruption.protectHead $values.disruption.protectWorkers $head }}
{{- /* Node consolidation (Karpenter) and scale-down (cluster-autoscaler) leave the node alone while this pod runs. */}}
{{- $_ := set $annotations "karpenter.sh/do-not-disrupt" "true" }}
{{- $_ := set $annotations "cluster-autoscaler.kubernetes.io/safe-to-evict" "false" }}
{{- end }}
metadata:
  labels:
    {{- include "batch-inference.rayPodLabels" $root | nindent 4 }}
    {{- with $workerGroup }}
    batch-inference/worker-group: {{ . }}
    {{- end }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "batch-inference.serviceAccountName" $root }}
  # No container gets the ServiceAccount token by default: on the head only the autoscaler
  # sidecar mounts it (kube-api-access below, autoscalerOptions.volumeMounts).
  automountServiceAccountToken: false
  # The driver drains in-flight batches on SIGTERM (stopGraceSeconds), then writes and pushes.
  terminationGracePeriodSeconds: {{ include "batch-inference.terminationGracePeriodSeconds" $root }}
  {{- with $values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- include "batch-inference.podSecurityContext" $root | nindent 4 }}
  {{- with $values.imagePullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with $group.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $group.tolerations }}
  tolerations:
    {{- include "batch-inference.tolerations" . | trim | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ ternary "ray-head" "ray-worker" $head }}
      # The GPU image only where the group has GPUs; the head and CPU groups run the CPU image.
      image: {{ ternary (include "batch-inference.gpuImage" $root) (include "batch-inference.image" $root) (eq ($group.type | default "") "gpu") }}
      imagePullPolicy: {{ $values.image.pullPolicy }}
      ports:
        {{- if $head }}
        - name: gcs-server
          containerPort: {{ $values.ports.gcs }}
          protocol: TCP
        - name: dashboard
          containerPort: {{ $values.ports.dashboard }}
          protocol: TCP
        - name: client
          containerPort: {{ $values.ports.client }}
          protocol: TCP
        {{- end }}
        {{- include "batch-inference.metricsPort" $root | nindent 8 }}
      env:
        {{- include "batch-inference.rayEnv" $root | nindent 8 }}
        {{- if $head }}
        # Ray's job supervisor SIGKILLs a driver stopped through the Jobs API (`ray job stop`) this
        # long after its SIGTERM (Ray's default: 3 s); the preStop hook below waits as long.
        - name: RAY_JOB_STOP_WAIT_TIME_S
          value: {{ include "batch-inference.jobStopWaitSeconds" $root | quote }}
        {{- end }}
      {{- with include "batch-inference.storageEnvFrom" $root }}
      {{- . | nindent 6 }}
      {{- end }}
      resources:
        {{- include "batch-inference.rayResources" (dict "root" $root "resources" $group.resources) | nindent 8 }}
      securityContext:
        {{- include "batch-inference.containerSecurityContext" $root | nindent 8 }}
      {{- if $head }}
      # A deleted head pod's SIGTERM goes to `ray start`, not to the job's driver: send it to each
      # driver first, so it drains while Ray is up and its job ends FAILED, which KubeRay retries
      # (files/stop-ray-jobs.py). Arguments: the Jobs API, SIGKILL after, wait, hold (_deadlines.tpl).
      lifecycle:
        preStop:
          exec:
            command:
              - python
              - -c
              - |
                {{- $root.Files.Get "files/stop-ray-jobs.py" | nindent 16 }}
              - http://127.0.0.1:{{ $values.ports.dashboard }}
              - {{ include "batch-inference.jobStopWaitSeconds" $root | quote }}
              - {{ include "batch-inference.preStopWaitSeconds" $root | quote }}
              - {{ include "batch-inference.preStopHoldSeconds" $root | quote }}
      {{- end }}
      volumeMounts:
        {{- include "batch-inference.rayVolumeMounts" $root | nindent 8 }}
        {{- if and $head $values.pushgatewayAuth.existingSecret }}
        # The driver (on the head) pushes with these; workers never push.
        - name: pushgateway-auth
          mountPath: {{ include "batch-inference.pushgatewayAuthPath" $root }}
          readOnly: true
        {{- end }}
    {{- if $head }}
    {{- include "batch-inference.driverLogContainer" $root | nindent 4 }}
    {{- end }}
  volumes:
    {{- include "batch-inference.rayVolumes" $root | nindent 4 }}
    {{- if $head }}
    {{- include "batch-inference.kubeApiAccessVolume" $root | nindent 4 }}
    {{- with $values.pushgatewayAuth.existingSecret }}
    - name: pushgateway-auth
      secret:
        secretName: {{ . }}
        defaultMode: 0440
        items:
          {{- range (eq $values.pushgatewayAuth.type "bearer" | ternary (list "token") (list "username" "password")) }}
          - key: {{ . }}
            path: {{ . }}
          {{- end }}
    {{- end }}
    {{- end }}
{{- end }}

{{/*
The head's driver-log container: prints the job driver's log (the pipeline's JSON lines, which
Ray's Jobs API writes to job-driver-<id>.log on the head) on its own stdout, so `kubectl logs
<head> -c driver-log` and the cluster's log collector see them. It reads the Ray log volume
only, holds no token and no credentials.
*/}}
{{- define "batch-inference.driverLogContainer" -}}
- name: driver-log
  image: {{ include "batch-inference.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command: ["/bin/sh", "-c"]
  args:
    - |
      while :; do
        for log in /tmp/ray/session_latest/logs/job-driver-*.log; do
          [ -e "$log" ] && exec tail -n +1 -F "$log"
        done
        sleep 2
      done
  resources:
    {{- toYaml .Values.driverLog.resources | nindent 4 }}
  securityContext:
    {{- include "batch-inference.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: ray-logs
      mountPath: /tmp/ray
      readOnly: true
{{- end }}

{{/*
What Kubernetes mounts for a ServiceAccount token when automountServiceAccountToken is on (a
bound, expiring token, the cluster's CA and the namespace), as a volume that only the autoscaler
sidecar mounts; Ray's autoscaler re-reads the token as the kubelet rotates it.
*/}}
{{- define "batch-inference.kubeApiAccessVolume" -}}
- name: kube-api-access
  projected:
    defaultMode: 0444
    sources:
      - serviceAccountToken:
          path: token
          expirationSeconds: 3607
      - configMap:
          name: kube-root-ca.crt
          items:
            - key: ca.crt
              path: ca.crt
      - downwardAPI:
          items:
            - path: namespace
              fieldRef:
                apiVersion: v1
                fieldPath: metadata.namespace
{{- end }}

{{/*
Environment of every Ray container: token authentication (the token from an existing Secret,
never a value), a writable HOME on the /tmp emptyDir, and the extra variables from values.
*/}}
{{- define "batch-inference.rayEnv" -}}
- name: RAY_AUTH_MODE
  value: {{ ternary "token" "disabled" .Values.rayAuth.enabled | quote }}
{{- if .Values.rayAuth.enabled }}
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ required "rayAuth.existingSecret is required when rayAuth.enabled" .Values.rayAuth.existingSecret }}
      key: {{ .Values.rayAuth.secretKey }}
{{- end }}
- name: HOME
  value: /tmp
{{- range $name, $value := .Values.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* S3/GCS credentials from an existing Secret, when IRSA/Workload Identity is not used. */}}
{{- define "batch-inference.storageEnvFrom" -}}
{{- with .Values.storage.credentialsSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end }}

{{/*
A Ray container's resources, with an ephemeral-storage request for its emptyDirs (unless the
values give one): the scheduler then puts the pod on a node with that much disk, rather than
the kubelet evicting it hours into a run when /tmp/ray fills. Call with (dict "root" $ "resources" <map>).
*/}}
{{- define "batch-inference.rayResources" -}}
{{- $resources := deepCopy .resources }}
{{- $requests := $resources.requests | default dict }}
{{- if not (hasKey $requests "ephemeral-storage") }}
{{- $_ := set $requests "ephemeral-storage" (include "batch-inference.scratchSize" .root) }}
{{- end }}
{{- $_ := set $resources "requests" $requests }}
{{- toYaml $resources }}
{{- end }}

{{/* The emptyDirs' size limits added up ("<n>Mi"); scratch sizes are whole Mi or Gi (values.schema.json). */}}
{{- define "batch-inference.scratchSize" -}}
{{- $mebibytes := 0 }}
{{- range (list .Values.scratch.tmpSizeLimit .Values.scratch.rayLogsSizeLimit) }}
{{- $mebibytes = add $mebibytes (ternary (mul (trimSuffix "Gi" . | int) 1024) (trimSuffix "Mi" . | int) (hasSuffix "Gi" .)) }}
{{- end }}
{{- printf "%dMi" $mebibytes }}
{{- end }}

{{/* Writable scratch space: the root filesystem is read-only. */}}
{{- define "batch-inference.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.scratch.tmpSizeLimit }}
- name: ray-logs
  emptyDir:
    sizeLimit: {{ .Values.scratch.rayLogsSizeLimit }}
{{- end }}

{{- define "batch-inference.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: ray-logs
  mountPath: /tmp/ray
{{- end }}

{{/* Volumes of a Ray pod: scratch space plus the pipeline config. */}}
{{- define "batch-inference.rayVolumes" -}}
{{ include "batch-inference.scratchVolumes" . }}
- name: pipeline-config
  configMap:
    name: {{ include "batch-inference.configMapName" . }}
{{- end }}

{{- define "batch-inference.rayVolumeMounts" -}}
{{ include "batch-inference.scratchMounts" . }}
- name: pipeline-config
  mountPath: {{ .Values.configMountPath }}
  readOnly: true
{{- end }}

{{/* Container ports every Ray node serves; the PodMonitor scrapes "metrics". */}}
{{- define "batch-inference.metricsPort" -}}
- name: metrics
  containerPort: {{ .Values.ports.metrics }}
  protocol: TCP
{{- end }}

{{/* A map of name -> toleration (values) as the list Kubernetes wants. */}}
{{- define "batch-inference.tolerations" -}}
{{- range $name, $toleration := . }}
- {{ toYaml $toleration | nindent 2 | trim }}
{{- end }}
{{- end }}
