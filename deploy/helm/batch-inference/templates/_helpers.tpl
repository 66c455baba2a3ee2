{{/*
Names, labels and the pieces every Ray pod shares. Kubernetes names are cut at 63 characters
(DNS label); the RayJob name is cut shorter because KubeRay derives longer names from it.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "batch-inference.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* release-chart, or fullnameOverride; the release name alone when it already holds the chart name. */}}
{{- define "batch-inference.fullname" -}}
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

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "batch-inference.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select this release's objects; never change them after the first install. */}}
{{- define "batch-inference.selectorLabels" -}}
app.kubernetes.io/name: {{ include "batch-inference.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "batch-inference.labels" -}}
helm.sh/chart: {{ include "batch-inference.chart" . }}
{{ include "batch-inference.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: batch-inference
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels on every Ray pod (head and workers): what the PodMonitor and NetworkPolicy select. */}}
{{- define "batch-inference.rayPodLabels" -}}
{{ include "batch-inference.labels" . }}
app.kubernetes.io/component: ray
{{- end }}

{{/*
The subset of rayPodLabels that selects this release's Ray pods (head and workers) and nothing
else: not the submitter, not the scheduled Workflow's pod, not another release's Ray pods.
*/}}
{{- define "batch-inference.rayPodSelectorLabels" -}}
{{ include "batch-inference.selectorLabels" . }}
app.kubernetes.io/component: ray
{{- end }}

{{/* A label selector from a map of labels; an empty map selects everything ({}). */}}
{{- define "batch-inference.labelSelector" -}}
{{- if . }}
matchLabels:
  {{- toYaml . | nindent 2 }}
{{- else -}}
{}
{{- end }}
{{- end }}

{{/* The ServiceAccount every pod of the job runs as. */}}
{{- define "batch-inference.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "batch-inference.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The ConfigMap holding the pipeline config. */}}
{{- define "batch-inference.configMapName" -}}
{{- printf "%s-config" (include "batch-inference.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
KubeRay names the RayCluster "<rayjob>-<5 random>" and services and pods after that, and refuses
RayJob names over 47 characters; 40 leaves room for the "-<revision>" suffix.
*/}}
{{- define "batch-inference.rayJobName" -}}
{{- printf "%s-%d" (include "batch-inference.fullname" . | trunc 40 | trimSuffix "-") (int .Release.Revision) }}
{{- end }}

{{/* The CronWorkflow's name; its Workflows (and so the RayJobs) are "<name>-<10-digit time>" <= 47. */}}
{{- define "batch-inference.cronWorkflowName" -}}
{{- include "batch-inference.fullname" . | trunc 36 | trimSuffix "-" }}
{{- end }}

{{/* image reference: repository@digest when a digest is given, else repository:tag. */}}
{{- define "batch-inference.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-gpu" .Chart.AppVersion) .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The command the RayJob runs (on the head node, as the Ray job's driver). */}}
{{- define "batch-inference.entrypoint" -}}
pipeline run --config {{ .Values.configMountPath }}/config.yaml
{{- end }}

{{/* Pod-level security context, for every pod the chart templates. */}}
{{- define "batch-inference.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurityContext.runAsUser }}
runAsGroup: {{ .Values.podSecurityContext.runAsGroup }}
fsGroup: {{ .Values.podSecurityContext.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security context, for every container the chart templates. */}}
{{- define "batch-inference.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
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

{{/*
The RayJob spec, shared by the one-off RayJob (templates/rayjob.yaml) and the RayJob each
scheduled Workflow creates (templates/cronworkflow.yaml). Call with
(dict "root" $ "runtimeEnv" <map>).
*/}}
{{- define "batch-inference.rayJobSpec" -}}
{{- $root := .root -}}
{{- $values := $root.Values -}}
{{- $cfg := $values.config.resources | default dict -}}
entrypoint: {{ include "batch-inference.entrypoint" $root | quote }}
{{- with .runtimeEnv }}
runtimeEnvYAML: |
  {{- toYaml . | nindent 2 }}
{{- end }}
shutdownAfterJobFinishes: {{ $values.rayJob.shutdownAfterJobFinishes }}
ttlSecondsAfterFinished: {{ $values.rayJob.ttlSecondsAfterFinished }}
activeDeadlineSeconds: {{ $values.rayJob.activeDeadlineSeconds }}
preRunningDeadlineSeconds: {{ $values.rayJob.preRunningDeadlineSeconds }}
backoffLimit: {{ $values.rayJob.backoffLimit }}
submissionMode: K8sJobMode
submitterConfig:
  backoffLimit: {{ $values.submitter.backoffLimit }}
submitterPodTemplate:
  metadata:
    labels:
      {{- include "batch-inference.labels" $root | nindent 6 }}
      app.kubernetes.io/component: submitter
  spec:
    restartPolicy: Never
    serviceAccountName: {{ include "batch-inference.serviceAccountName" $root }}
    automountServiceAccountToken: false
    securityContext:
      {{- include "batch-inference.podSecurityContext" $root | nindent 6 }}
    {{- with $values.imagePullSecrets }}
    imagePullSecrets:
      {{- range . }}
      - name: {{ . }}
      {{- end }}
    {{- end }}
    containers:
      - name: ray-job-submitter
        image: {{ include "batch-inference.image" $root }}
        imagePullPolicy: {{ $values.image.pullPolicy }}
        env:
          {{- include "batch-inference.rayEnv" $root | nindent 10 }}
        resources:
          {{- toYaml $values.submitter.resources | nindent 10 }}
        securityContext:
          {{- include "batch-inference.containerSecurityContext" $root | nindent 10 }}
        volumeMounts:
          - name: tmp
            mountPath: /tmp
    volumes:
      - name: tmp
        emptyDir:
          sizeLimit: 64Mi
rayClusterSpec:
  rayVersion: {{ $values.rayVersion | quote }}
  enableInTreeAutoscaling: true
  {{- if $values.rayAuth.enabled }}
  authOptions:
    mode: token
    secretName: {{ $values.rayAuth.existingSecret }}
  {{- end }}
  autoscalerOptions:
    upscalingMode: {{ $values.autoscaler.upscalingMode }}
    idleTimeoutSeconds: {{ $values.autoscaler.idleTimeoutSeconds }}
    imagePullPolicy: {{ $values.image.pullPolicy }}
    env:
      {{- include "batch-inference.rayEnv" $root | nindent 6 }}
    resources:
      {{- toYaml $values.autoscaler.resources | nindent 6 }}
    securityContext:
      {{- include "batch-inference.containerSecurityContext" $root | nindent 6 }}
    volumeMounts:
      - name: tmp
        mountPath: /tmp
  headGroupSpec:
    serviceType: ClusterIP
    rayStartParams:
      num-cpus: "0"
      dashboard-host: "0.0.0.0"
      metrics-export-port: {{ $values.ports.metrics | quote }}
      {{- with $values.head.rayStartParams }}
      {{- toYaml . | nindent 6 }}
      {{- end }}
    template:
      metadata:
        labels:
          {{- include "batch-inference.rayPodLabels" $root | nindent 10 }}
        {{- with $values.podAnnotations }}
        annotations:
          {{- toYaml . | nindent 10 }}
        {{- end }}
      spec:
        serviceAccountName: {{ include "batch-inference.serviceAccountName" $root }}
        # The in-tree autoscaler sidecar talks to the Kubernetes API with this token (KubeRay
        # binds its own Role to this ServiceAccount); the worker pods mount no token.
        automountServiceAccountToken: true
        securityContext:
          {{- include "batch-inference.podSecurityContext" $root | nindent 10 }}
        {{- with $values.imagePullSecrets }}
        imagePullSecrets:
          {{- range . }}
          - name: {{ . }}
          {{- end }}
        {{- end }}
        {{- with $values.head.nodeSelector }}
        nodeSelector:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with $values.head.affinity }}
        affinity:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with $values.head.tolerations }}
        tolerations:
          {{- include "batch-inference.tolerations" . | trim | nindent 10 }}
        {{- end }}
        containers:
          - name: ray-head
            image: {{ include "batch-inference.image" $root }}
            imagePullPolicy: {{ $values.image.pullPolicy }}
            ports:
              - name: gcs-server
                containerPort: {{ $values.ports.gcs }}
                protocol: TCP
              - name: dashboard
                containerPort: {{ $values.ports.dashboard }}
                protocol: TCP
              - name: client
                containerPort: {{ $values.ports.client }}
                protocol: TCP
              {{- include "batch-inference.metricsPort" $root | nindent 14 }}
            env:
              {{- include "batch-inference.rayEnv" $root | nindent 14 }}
            {{- with include "batch-inference.storageEnvFrom" $root }}
            {{- . | nindent 12 }}
            {{- end }}
            resources:
              {{- toYaml $values.head.resources | nindent 14 }}
            securityContext:
              {{- include "batch-inference.containerSecurityContext" $root | nindent 14 }}
            volumeMounts:
              {{- include "batch-inference.rayVolumeMounts" $root | nindent 14 }}
        volumes:
          {{- include "batch-inference.rayVolumes" $root | nindent 10 }}
  workerGroupSpecs:
  {{- range $groupName, $group := $values.workerGroups }}
  {{- if $group.enabled }}
  {{- $rayResource := ternary ($cfg.gpu_group_resource | default "gpu_group") ($cfg.cpu_group_resource | default "cpu_group") (eq $group.type "gpu") }}
    - groupName: {{ $groupName }}
      replicas: {{ $group.minReplicas }}
      minReplicas: {{ $group.minReplicas }}
      maxReplicas: {{ $group.maxReplicas }}
      {{- with $group.idleTimeoutSeconds }}
      idleTimeoutSeconds: {{ . }}
      {{- end }}
      rayStartParams:
        metrics-export-port: {{ $values.ports.metrics | quote }}
        # The Ray resource the pipeline places its stages by (config.resources.*_group_resource).
        resources: {{ printf "'{\"%s\": %d}'" $rayResource (int $values.groupResourceUnits) | quote }}
        {{- if eq $group.type "gpu" }}
        num-gpus: {{ index $group.resources.limits "nvidia.com/gpu" | toString | quote }}
        {{- end }}
        {{- with $group.rayStartParams }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      template:
        metadata:
          labels:
            {{- include "batch-inference.rayPodLabels" $root | nindent 12 }}
            batch-inference/worker-group: {{ $groupName }}
          {{- with $values.podAnnotations }}
          annotations:
            {{- toYaml . | nindent 12 }}
          {{- end }}
        spec:
          serviceAccountName: {{ include "batch-inference.serviceAccountName" $root }}
          automountServiceAccountToken: false
          securityContext:
            {{- include "batch-inference.podSecurityContext" $root | nindent 12 }}
          {{- with $values.imagePullSecrets }}
          imagePullSecrets:
            {{- range . }}
            - name: {{ . }}
            {{- end }}
          {{- end }}
          {{- with $group.nodeSelector }}
          nodeSelector:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $group.affinity }}
          affinity:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          {{- with $group.tolerations }}
          tolerations:
            {{- include "batch-inference.tolerations" . | trim | nindent 12 }}
          {{- end }}
          containers:
            - name: ray-worker
              image: {{ include "batch-inference.image" $root }}
              imagePullPolicy: {{ $values.image.pullPolicy }}
              ports:
                {{- include "batch-inference.metricsPort" $root | nindent 16 }}
              env:
                {{- include "batch-inference.rayEnv" $root | nindent 16 }}
              {{- with include "batch-inference.storageEnvFrom" $root }}
              {{- . | nindent 14 }}
              {{- end }}
              resources:
                {{- toYaml $group.resources | nindent 16 }}
              securityContext:
                {{- include "batch-inference.containerSecurityContext" $root | nindent 16 }}
              volumeMounts:
                {{- include "batch-inference.rayVolumeMounts" $root | nindent 16 }}
          volumes:
            {{- include "batch-inference.rayVolumes" $root | nindent 12 }}
  {{- end }}
  {{- end }}
{{- end }}

{{/* The ServiceAccount the scheduled Workflows run as (schedule.enabled). */}}
{{- define "batch-inference.workflowServiceAccountName" -}}
{{- printf "%s-workflow" (include "batch-inference.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}
