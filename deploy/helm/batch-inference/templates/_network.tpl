{{/*
The Kubernetes API server as NetworkPolicy peers (ipBlocks), for the head's autoscaler and the
scheduled Workflow's step: networkPolicy.egress.kubernetesApi.cidrs when set; else any address
on the API ports when kubernetesApi.allowAnyAddress says so; else, on a real install, the
addresses of the default namespace's `kubernetes` Endpoints (what the Service forwards to, which
is what the CNI sees). Otherwise the render fails, naming the key: `helm template` cannot look
the addresses up, and an open 443/6443 rule would reach any HTTPS service.
Renders a `to:` list, or nothing for "any address".
*/}}
{{- define "batch-inference.kubeApiPeers" -}}
{{- $api := .Values.networkPolicy.egress.kubernetesApi -}}
{{- $cidrs := $api.cidrs | default list -}}
{{- if and (not $cidrs) (not $api.allowAnyAddress) -}}
{{- $endpoints := lookup "v1" "Endpoints" "default" "kubernetes" -}}
{{- range ($endpoints.subsets | default list) -}}
{{- range (.addresses | default list) -}}
{{- $cidrs = append $cidrs (printf "%s/%s" .ip (ternary "128" "32" (contains ":" .ip))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $cidrs }}
to:
  {{- range $cidrs }}
  - ipBlock:
      cidr: {{ . }}
  {{- end }}
{{- else if not $api.allowAnyAddress }}
{{- fail "networkPolicy.egress.kubernetesApi.cidrs is empty and the API server's addresses could not be looked up (helm template, or no read access to the default namespace's kubernetes Endpoints): set it to the addresses of `kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes`, or set networkPolicy.egress.kubernetesApi.allowAnyAddress to true to let these pods reach any address on the API ports" }}
{{- end }}
{{- end }}

{{/* The API ports as NetworkPolicy ports. */}}
{{- define "batch-inference.kubeApiPorts" -}}
ports:
  {{- range .Values.networkPolicy.egress.kubernetesApi.ports }}
  - port: {{ . }}
    protocol: TCP
  {{- end }}
{{- end }}

{{/* Labels of the scheduled Workflow's step pod (workflowSpec.podMetadata), which its NetworkPolicy selects. */}}
{{- define "batch-inference.workflowPodLabels" -}}
{{ include "batch-inference.selectorLabels" . }}
app.kubernetes.io/component: workflow-step
{{- end }}
