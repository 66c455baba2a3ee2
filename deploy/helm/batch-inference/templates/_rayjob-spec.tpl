{{/* The command the RayJob runs (on the head node, as the Ray job's driver). */}}
{{- define "batch-inference.entrypoint" -}}
pipeline run --config {{ .Values.configMountPath }}/config.yaml
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
{{- /*
HTTPMode: the KubeRay operator submits the job to the head's Jobs API itself (with the job id it
keeps in status, so a repeated submit is a no-op) and polls its status there. No submitter pod
follows the driver's log, so a broken log stream cannot fail a healthy run (K8sJobMode fails
the RayJob after its submitter's backoffLimit breaks; SidecarMode without the alpha
SidecarSubmitterRestart gate after one). The job's status comes from Ray's Jobs API, and the
run's own record is its manifest and pushed metrics. The driver's log reaches `kubectl logs` through
the head's driver-log container instead (templates/_ray-pod.tpl).
*/}}
submissionMode: HTTPMode
rayClusterSpec:
  rayVersion: {{ $values.rayVersion | quote }}
  enableInTreeAutoscaling: true
  {{- if $values.rayAuth.enabled }}
  authOptions:
    mode: token
    secretName: {{ $values.rayAuth.existingSecret }}
  {{- end }}
  autoscalerOptions:
    # v2: what Ray 2.60 runs under KubeRay anyway (it turns v2 on when KubeRay sets
    # RAY_CLOUD_INSTANCE_ID and RAY_NODE_TYPE_NAME); naming it makes KubeRay apply v2's rules and
    # accept the per-group idleTimeoutSeconds below, which it refuses under v1.
    version: v2
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
      # The only container of the head pod with a Kubernetes API token (the pod mounts none by
      # default): the autoscaler scales the worker groups through the API; the driver in ray-head
      # runs user-facing code and gets no token (templates/_ray-pod.tpl, kube-api-access).
      - name: kube-api-access
        mountPath: /var/run/secrets/kubernetes.io/serviceaccount
        readOnly: true
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
      {{- include "batch-inference.rayPodTemplate" (dict "root" $root "group" $values.head) | nindent 6 }}
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
        {{- include "batch-inference.rayPodTemplate" (dict "root" $root "group" $group "workerGroup" $groupName) | nindent 8 }}
  {{- end }}
  {{- end }}
{{- end }}
