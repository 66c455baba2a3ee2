{{/*
How long things may take, and the checks that keep the deadlines consistent (values.yaml states
the arithmetic above `rayJob`). KubeRay 1.7 counts activeDeadlineSeconds and
preRunningDeadlineSeconds from an attempt's start and restarts both clocks on each retry
(rayjob_controller.go, initRayJobStatusIfNeed); an attempt that passes activeDeadlineSeconds is
not retried, one that fails otherwise is, up to backoffLimit times. Between two attempts KubeRay
deletes the failed attempt's cluster and waits for its pods to go.
*/}}

{{/*
How a deleted head pod stops the job, each bound inside the next (docs/deploy.md, "A deleted head pod"):
  stopGraceSeconds                  the driver drains its write after SIGTERM (resources.stop_grace_s);
  jobStopWaitSeconds  = that + 20   the driver is SIGKILLed this long after its SIGTERM: by the head's
                                    preStop hook, which sends that SIGTERM, and by Ray's job supervisor
                                    after a stop through the Jobs API (RAY_JOB_STOP_WAIT_TIME_S on the
                                    head); room for the run's summary and last push after the drain;
  preStopWaitSeconds  = that + 5    the hook waits this long at most for the job to end (FAILED);
  preStopHoldSeconds  = 10          then it keeps the head up, for the operator's poll to see the end;
  terminationGracePeriodSeconds     = wait + hold + 5: then Kubernetes SIGTERMs Ray itself, SIGKILLs it after.
*/}}

{{/* RAY_JOB_STOP_WAIT_TIME_S of the head; refused from extraEnv and the job's runtime env, which would override it. */}}
{{- define "batch-inference.jobStopWaitSeconds" -}}
{{- range $key, $vars := dict "extraEnv" .Values.extraEnv "rayJob.runtimeEnv.env_vars" ((.Values.rayJob.runtimeEnv | default dict).env_vars | default dict) }}
{{- if hasKey $vars "RAY_JOB_STOP_WAIT_TIME_S" }}
{{- fail (printf "%s.RAY_JOB_STOP_WAIT_TIME_S is set from stopGraceSeconds (%d + 20): the preStop hook and terminationGracePeriodSeconds are above it; set stopGraceSeconds instead" $key (int $.Values.stopGraceSeconds)) }}
{{- end }}
{{- end }}
{{- add (int .Values.stopGraceSeconds) 20 -}}
{{- end }}

{{/* Seconds the head's preStop hook waits for the jobs it signalled to end: its own SIGKILL has come by then. */}}
{{- define "batch-inference.preStopWaitSeconds" -}}
{{- add (include "batch-inference.jobStopWaitSeconds" . | int) 5 -}}
{{- end }}

{{/*
Seconds the head's preStop hook keeps the head up once its jobs have ended: the KubeRay 1.7
operator polls a running RayJob's status every 3 s (RayJobDefaultRequeueDuration), through the
head's Service, which keeps a terminating head in its endpoints (headless, publishNotReadyAddresses),
so 10 s is three polls and a margin for a busy operator (one that misses it: docs/deploy.md).
*/}}
{{- define "batch-inference.preStopHoldSeconds" -}}
10
{{- end }}

{{/* Seconds every Ray pod gets to stop: the head's preStop hook, then 5 s for Ray's own stop (stopGraceSeconds + 40). */}}
{{- define "batch-inference.terminationGracePeriodSeconds" -}}
{{- add (include "batch-inference.preStopWaitSeconds" . | int) (include "batch-inference.preStopHoldSeconds" . | int) 5 -}}
{{- end }}

{{/* Seconds between two attempts: the failed attempt's pods stop (their grace period), then KubeRay's reconciles (every few seconds) create the next cluster. */}}
{{- define "batch-inference.retryGapSeconds" -}}
{{- add (include "batch-inference.terminationGracePeriodSeconds" . | int) 60 -}}
{{- end }}

{{/* The longest a RayJob can run: every attempt to its deadline, and the gaps between them. */}}
{{- define "batch-inference.rayJobMaxSeconds" -}}
{{- $job := .Values.rayJob -}}
{{- $attempts := add (int $job.backoffLimit) 1 -}}
{{- add (mul $attempts (int $job.activeDeadlineSeconds)) (mul (int $job.backoffLimit) (include "batch-inference.retryGapSeconds" . | int)) -}}
{{- end }}

{{/* The scheduled Workflow's deadline: the longest RayJob plus 600 s for its pod's start and last poll, so the Workflow never gives up on a RayJob that is still running. */}}
{{- define "batch-inference.workflowDeadlineSeconds" -}}
{{- add (include "batch-inference.rayJobMaxSeconds" . | int) 600 -}}
{{- end }}

{{/* Fails the render, naming the keys, when the deadlines contradict each other. Renders nothing. */}}
{{- define "batch-inference.checkDeadlines" -}}
{{- $job := .Values.rayJob -}}
{{- if ge (int $job.preRunningDeadlineSeconds) (int $job.activeDeadlineSeconds) }}
{{- fail (printf "rayJob.preRunningDeadlineSeconds (%d) must be less than rayJob.activeDeadlineSeconds (%d): KubeRay counts both from an attempt's start" (int $job.preRunningDeadlineSeconds) (int $job.activeDeadlineSeconds)) }}
{{- end }}
{{- if .Values.schedule.enabled }}
{{- $workflow := include "batch-inference.workflowDeadlineSeconds" . | int }}
{{- $latest := add (int .Values.schedule.startingDeadlineSeconds) $workflow }}
{{- if gt $latest (int .Values.schedule.intervalSeconds) }}
{{- fail (printf "a scheduled run may last longer than schedule.intervalSeconds (%d): schedule.startingDeadlineSeconds (%d) + the Workflow's deadline (%d s = (rayJob.backoffLimit %d + 1) x rayJob.activeDeadlineSeconds %d + retries' gaps + 600) = %d s; lower rayJob.backoffLimit or rayJob.activeDeadlineSeconds (values.yaml states the arithmetic)" (int .Values.schedule.intervalSeconds) (int .Values.schedule.startingDeadlineSeconds) $workflow (int $job.backoffLimit) (int $job.activeDeadlineSeconds) $latest) }}
{{- end }}
{{- end }}
{{- end }}
