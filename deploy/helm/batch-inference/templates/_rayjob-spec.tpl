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
