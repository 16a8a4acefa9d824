{{/* Names and labels. */}}
{{- define "kubewire.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kubewire.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "kubewire.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "kubewire.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kubewire.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubewire.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kubewire.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "kubewire.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kubewire.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubewire.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The configuration file: .Values.config plus what the chart owns (checkpoint path on the volume,
redaction key, admin address, leader election). Only sections kubewire knows are added, and
only when their switch is on, because kubewire rejects unknown fields.
*/}}
{{- define "kubewire.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- if not $cfg.resources -}}
{{- fail "config.resources must list at least one resource" -}}
{{- end -}}
{{- if hasKey $cfg "admin" -}}
{{- fail "set admin.enabled / admin.port instead of config.admin (the chart wires the port, probes and Service)" -}}
{{- end -}}
{{- if hasKey $cfg "leaderElection" -}}
{{- fail "set leaderElection.enabled / leaderElection.settings instead of config.leaderElection (the chart adds the Lease RBAC)" -}}
{{- end -}}
{{- $cp := deepCopy ($cfg.checkpoint | default dict) -}}
{{- if not (hasKey $cp "path") -}}
{{- $_ := set $cp "path" (printf "%s/checkpoint.redb" (trimSuffix "/" .Values.checkpoint.mountPath)) -}}
{{- end -}}
{{- if .Values.redactionKey.existingSecret -}}
{{- $_ := set $cp "redactionKeyPath" (printf "/etc/kubewire/redaction/%s" .Values.redactionKey.key) -}}
{{- end -}}
{{- $_ := set $cfg "checkpoint" $cp -}}
{{- if .Values.admin.enabled -}}
{{- $_ := set $cfg "admin" (dict "enabled" true "address" (printf "0.0.0.0:%v" .Values.admin.port)) -}}
{{- else -}}
{{- $_ := set $cfg "admin" (dict "enabled" false) -}}
{{- end -}}
{{- if .Values.leaderElection.enabled -}}
{{- $le := deepCopy (.Values.leaderElection.settings | default dict) -}}
{{- $_ := set $le "enabled" true -}}
{{- if not (hasKey $le "leaseName") -}}
{{- $_ := set $le "leaseName" (include "kubewire.fullname" .) -}}
{{- end -}}
{{- $_ := set $cfg "leaderElection" $le -}}
{{- end -}}
{{- toYaml $cfg -}}
{{- end -}}

{{/*
RBAC derivation. "kubewire.resourceRule" maps one `resources[].resource` string to
"<apiGroup>|<plural>", following kubewire's accepted forms:
  configmaps                 bare plural: looked up in the table of built-in resources below
  deployments.apps           plural.group
  configmaps.v1              plural.version (core group)
  widgets.v1.example.com     plural.version.group
  v1/configmaps              version/plural (core group)
  apps/deployments           group/plural
  apps/v1/deployments        group/version/plural
A Kind (`Deployment.v1.apps`) or an unknown bare name fails the render: the API server's
RBAC matches plurals, which only discovery knows (write rbac.rules then).
*/}}
{{- define "kubewire.builtinGroups" -}}
{{- $core := list "configmaps" "secrets" "pods" "services" "endpoints" "events" "namespaces" "nodes" "persistentvolumeclaims" "persistentvolumes" "serviceaccounts" "replicationcontrollers" "limitranges" "resourcequotas" "podtemplates" -}}
{{- $groups := dict "apps" (list "deployments" "statefulsets" "daemonsets" "replicasets" "controllerrevisions") "batch" (list "jobs" "cronjobs") "networking.k8s.io" (list "ingresses" "ingressclasses" "networkpolicies") "policy" (list "poddisruptionbudgets") "autoscaling" (list "horizontalpodautoscalers") "rbac.authorization.k8s.io" (list "roles" "rolebindings" "clusterroles" "clusterrolebindings") "coordination.k8s.io" (list "leases") "discovery.k8s.io" (list "endpointslices") "storage.k8s.io" (list "storageclasses" "csidrivers" "csinodes" "volumeattachments") "apiextensions.k8s.io" (list "customresourcedefinitions") "scheduling.k8s.io" (list "priorityclasses") "admissionregistration.k8s.io" (list "mutatingwebhookconfigurations" "validatingwebhookconfigurations") -}}
{{- $table := dict -}}
{{- range $core }}{{ $_ := set $table . "" }}{{ end -}}
{{- range $group, $names := $groups }}{{ range $names }}{{ $_ := set $table . $group }}{{ end }}{{ end -}}
{{- toJson $table -}}
{{- end -}}

{{- define "kubewire.resourceRule" -}}
{{- $input := .resource -}}
{{- $table := .table -}}
{{- $version := "^v[0-9]+((alpha|beta)[0-9]+)?$" -}}
{{- $group := "" -}}
{{- $name := "" -}}
{{- if contains "/" $input -}}
  {{- $parts := splitList "/" $input -}}
  {{- if eq (len $parts) 3 -}}
    {{- $group = index $parts 0 -}}
    {{- $name = index $parts 2 -}}
  {{- else if eq (len $parts) 2 -}}
    {{- $name = index $parts 1 -}}
    {{- if not (regexMatch $version (index $parts 0)) -}}
      {{- $group = index $parts 0 -}}
    {{- end -}}
  {{- else -}}
    {{- fail (printf "config.resources: %q has too many slashes (group/version/plural at most)" $input) -}}
  {{- end -}}
{{- else -}}
  {{- $parts := splitList "." $input -}}
  {{- $name = first $parts -}}
  {{- $rest := rest $parts -}}
  {{- if not $rest -}}
    {{- if not (hasKey $table $name) -}}
      {{- fail (printf "config.resources: cannot derive an RBAC rule for %q: write it with its group (e.g. %s.example.com, or v1/%s for the core group), or write rbac.rules yourself" $input $name $name) -}}
    {{- end -}}
    {{- $group = index $table $name -}}
  {{- else if regexMatch $version (first $rest) -}}
    {{- $group = join "." (rest $rest) -}}
  {{- else -}}
    {{- $group = join "." $rest -}}
  {{- end -}}
{{- end -}}
{{- if or (not $name) (ne $name (lower $name)) -}}
  {{- fail (printf "config.resources: %q names a Kind; RBAC needs the plural resource name (e.g. deployments.apps for Deployment.v1.apps), or write rbac.rules yourself" $input) -}}
{{- end -}}
{{- printf "%s|%s" $group $name -}}
{{- end -}}

{{/*
Rules for a list of resource entries: get/list/watch, one rule per API group, sorted; then
rbac.extraRules. With rbac.rules set, those replace the derived rules.
Argument: dict "entries" <list of resources[] entries> "Values" .Values
*/}}
{{- define "kubewire.rules" -}}
{{- $values := .Values -}}
{{- $rules := list -}}
{{- if $values.rbac.rules -}}
{{- $rules = $values.rbac.rules -}}
{{- else -}}
{{- $table := include "kubewire.builtinGroups" . | fromJson -}}
{{- $byGroup := dict -}}
{{- range .entries -}}
{{- if not .resource -}}{{- fail "config.resources: every entry needs `resource`" -}}{{- end -}}
{{- $pair := splitList "|" (include "kubewire.resourceRule" (dict "resource" .resource "table" $table)) -}}
{{- $g := index $pair 0 -}}
{{- $_ := set $byGroup $g (append (get $byGroup $g | default list) (index $pair 1) | uniq | sortAlpha) -}}
{{- end -}}
{{- range $g := keys $byGroup | sortAlpha -}}
{{- $rules = append $rules (dict "apiGroups" (list $g) "resources" (get $byGroup $g) "verbs" (list "get" "list" "watch")) -}}
{{- end -}}
{{- end -}}
{{- $rules = concat $rules ($values.rbac.extraRules | default list) -}}
{{- toYaml $rules -}}
{{- end -}}

{{/* "true" when RBAC is a Role per namespace, "" when a ClusterRole. */}}
{{- define "kubewire.namespacedRbac" -}}
{{- $all := true -}}
{{- range .Values.config.resources -}}
{{- if not .namespaces -}}{{- $all = false -}}{{- end -}}
{{- end -}}
{{- if eq .Values.rbac.scope "namespaced" -}}
{{- if not $all -}}
{{- fail "rbac.scope=namespaced: every config.resources entry must list namespaces" -}}
{{- end -}}
true
{{- else if eq .Values.rbac.scope "auto" -}}
{{- if $all }}true{{ end -}}
{{- else if ne .Values.rbac.scope "cluster" -}}
{{- fail (printf "rbac.scope must be auto, cluster or namespaced, not %q" .Values.rbac.scope) -}}
{{- end -}}
{{- end -}}

{{/* The Lease's name and namespace (as the config gives them to kubewire). */}}
{{- define "kubewire.leaseName" -}}
{{- .Values.leaderElection.settings.leaseName | default (include "kubewire.fullname" .) -}}
{{- end -}}
{{- define "kubewire.leaseNamespace" -}}
{{- .Values.leaderElection.settings.leaseNamespace | default .Release.Namespace -}}
{{- end -}}
