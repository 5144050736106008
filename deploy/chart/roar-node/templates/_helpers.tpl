{{/* The name of every object: the release name, or <release>-roar-node
when the release name does not already say roar-node. */}}
{{- define "roar-node.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The selector: the same label the kustomize manifests use, so tools and
the docs find the pods with -l app.kubernetes.io/name=roar-node. */}}
{{- define "roar-node.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
{{- end -}}

{{/* Labels of the chart's objects (not of the pods: a pod's labels must
not change on every chart version, or the DaemonSet would roll). */}}
{{- define "roar-node.labels" -}}
{{ include "roar-node.selector" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* repository[:tag][@digest]. */}}
{{- define "roar-node.image" -}}
{{- $repo := required "image.repository is required: where you pushed roar-node (cargo xtask image --push REPOSITORY)" .Values.image.repository -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- $ref := printf "%s:%s" $repo $tag -}}
{{- with .Values.image.digest -}}
{{- if not (regexMatch "^sha256:[0-9a-f]{64}$" .) -}}
{{- fail (printf "image.digest %q: expected sha256: and 64 hex digits" .) -}}
{{- end -}}
{{- $ref = printf "%s@%s" $ref . -}}
{{- end -}}
{{- $ref -}}
{{- end -}}
