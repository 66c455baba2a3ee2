{{/*
Names and labels. Kubernetes names are cut at 63 characters (DNS label); the RayJob name is cut
shorter because KubeRay derives longer names from it. The rest of the shared template code is in
files named for what they hold: _rayjob-spec.tpl (the RayJob spec), _ray-pod.tpl (the pod
template of the Ray head and worker groups) and _security.tpl (security contexts).
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
else: not the scheduled Workflow's pod, not another release's Ray pods.
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
{{- if .Values.rayJob.name }}
{{- .Values.rayJob.name }}
{{- else }}
{{- printf "%s-%d" (include "batch-inference.fullname" . | trunc 40 | trimSuffix "-") (int .Release.Revision) }}
{{- end }}
{{- end }}

{{/* The Kueue queue label of a RayJob (kueueQueueName), or nothing. */}}
{{- define "batch-inference.kueueLabel" -}}
{{- with .Values.kueueQueueName }}
kueue.x-k8s.io/queue-name: {{ . }}
{{- end }}
{{- end }}

{{/* The CronWorkflow's name; its Workflows are "<name>-<10-digit time>", their RayJobs that plus "-<5 random>": <= 47. */}}
{{- define "batch-inference.cronWorkflowName" -}}
{{- include "batch-inference.fullname" . | trunc 30 | trimSuffix "-" }}
{{- end }}

{{/*
The CPU image (head, CPU groups, driver-log, autoscaler): repository@digest when a digest is
given, else repository:tag ("<appVersion>-cpu" by default). Fails the render when
image.pullPolicy is Always without digests: a moving tag pulled for every pod lets workers
started later run other code than the head.
*/}}
{{- define "batch-inference.image" -}}
{{- if and (eq .Values.image.pullPolicy "Always") (not (and .Values.image.digest .Values.gpuImage.digest)) }}
{{- fail "image.pullPolicy Always pulls the tag again for every pod, so workers started later may run other code than the head: pin image.digest and gpuImage.digest, or use immutable tags with IfNotPresent" }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-cpu" .Chart.AppVersion) .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The GPU image (worker groups of type gpu only): gpuImage, its repository defaulting to image.repository. */}}
{{- define "batch-inference.gpuImage" -}}
{{- $repository := default .Values.image.repository .Values.gpuImage.repository }}
{{- if .Values.gpuImage.digest }}
{{- printf "%s@%s" $repository .Values.gpuImage.digest }}
{{- else }}
{{- printf "%s:%s" $repository (default (printf "%s-gpu" .Chart.AppVersion) .Values.gpuImage.tag) }}
{{- end }}
{{- end }}

{{/* The ServiceAccount the scheduled Workflows run as (schedule.enabled). */}}
{{- define "batch-inference.workflowServiceAccountName" -}}
{{- printf "%s-workflow" (include "batch-inference.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* Where the head mounts the Pushgateway credentials (pushgatewayAuth.existingSecret). */}}
{{- define "batch-inference.pushgatewayAuthPath" -}}
/etc/pipeline-secrets/pushgateway
{{- end }}

{{/*
The pipeline config written to the ConfigMap: .Values.config, plus resources.worker_groups (from
workerGroups), resources.stop_grace_s (from stopGraceSeconds), and the paths of the mounted
Pushgateway credentials when pushgatewayAuth.existingSecret is set (files, never the secret).
*/}}
{{- define "batch-inference.pipelineConfig" -}}
{{- $config := deepCopy .Values.config }}
{{- /*
resources.worker_groups: the groups as the RayJob declares them (what Ray sees of each
pod: num-cpus is KubeRay's rounded-up CPU limit, num-gpus the nvidia.com/gpu limit, memory the
memory limit; min and max replicas; the group resource the pods advertise). The pipeline plans
from these, never from the pods up when the driver starts (pipeline/worker_groups.py).
*/}}
{{- $resources := $config.resources | default dict }}
{{- if hasKey $resources "worker_groups" }}
{{- fail "config.resources.worker_groups is rendered from workerGroups: set the groups there" }}
{{- end }}
{{- $groups := dict }}
{{- range $name, $group := .Values.workerGroups }}
{{- if $group.enabled }}
{{- $limits := $group.resources.limits | default dict }}
{{- $requests := $group.resources.requests | default dict }}
{{- $params := $group.rayStartParams | default dict }}
{{- $cpu := index $params "num-cpus" | default (index $limits "cpu") | default (index $requests "cpu") | required (printf "workerGroups.%s.resources.limits.cpu is required" $name) | toString }}
{{- $cpus := ternary (divf (trimSuffix "m" $cpu) 1000) (float64 $cpu) (hasSuffix "m" $cpu) | ceil }}
{{- $gpu := eq $group.type "gpu" }}
{{- $resource := ternary ($resources.gpu_group_resource | default "gpu_group") ($resources.cpu_group_resource | default "cpu_group") $gpu }}
{{- $declared := dict "cpus" $cpus "gpus" (ternary (index $limits "nvidia.com/gpu" | int) 0 $gpu) "min_replicas" $group.minReplicas "max_replicas" $group.maxReplicas "resources" (dict $resource (int $.Values.groupResourceUnits)) }}
{{- with index $limits "memory" | default (index $requests "memory") }}
{{- $_ := set $declared "memory" (toString .) }}
{{- end }}
{{- $_ := set $groups $name $declared }}
{{- end }}
{{- end }}
{{- $_ := set $resources "worker_groups" $groups }}
{{- /* The driver's drain after SIGTERM; the pods' terminationGracePeriodSeconds is above it (_deadlines.tpl). */}}
{{- if hasKey $resources "stop_grace_s" }}
{{- fail "config.resources.stop_grace_s is rendered from stopGraceSeconds: set it there (the pods' grace period follows it)" }}
{{- end }}
{{- $_ := set $resources "stop_grace_s" (int .Values.stopGraceSeconds) }}
{{- $_ := set $config "resources" $resources }}
{{- with .Values.pushgatewayAuth.existingSecret }}
{{- $metrics := $config.metrics | default dict }}
{{- if not $metrics.pushgateway_url }}
{{- fail "pushgatewayAuth.existingSecret is set but config.metrics.pushgateway_url is not: name the Pushgateway the credentials are for" }}
{{- end }}
{{- $dir := include "batch-inference.pushgatewayAuthPath" $ }}
{{- if eq $.Values.pushgatewayAuth.type "bearer" }}
{{- $_ := set $metrics "pushgateway_token_file" (printf "%s/token" $dir) }}
{{- else }}
{{- $_ := set $metrics "pushgateway_username_file" (printf "%s/username" $dir) }}
{{- $_ := set $metrics "pushgateway_password_file" (printf "%s/password" $dir) }}
{{- end }}
{{- $_ := set $config "metrics" $metrics }}
{{- end }}
{{- toYaml $config }}
{{- end }}
