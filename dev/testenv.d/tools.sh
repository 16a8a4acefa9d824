# Deployment tools (helm, kustomize) built from the Go module proxy and cached like the
# services of dev/testenv: ${XDG_CACHE_HOME:-~/.cache}/kubewire/<name>-<version>/<name>.
# Sourced by dev/tools; tests call `dev/tools path <name>`, which builds on first use.

HELM_VERSION=v3.22.0       # helm.sh/helm/v3 (go 1.26.0 — builds with a local Go >= 1.26)
KUSTOMIZE_VERSION=v5.8.2   # sigs.k8s.io/kustomize/kustomize/v5 (v5.8.3 needs go 1.27)

tool_version() {
  case $1 in
    helm) echo "$HELM_VERSION" ;;
    kustomize) echo "$KUSTOMIZE_VERSION" ;;
    *) return 1 ;;
  esac
}

tool_package() {
  case $1 in
    helm) echo "helm.sh/helm/v3/cmd/helm" ;;
    kustomize) echo "sigs.k8s.io/kustomize/kustomize/v5" ;;
    *) return 1 ;;
  esac
}

# build_tool NAME: no-op when cached; otherwise `go install` into a temp dir and publish it
# atomically. Concurrent callers (parallel tests) serialise on a lock so the build runs once.
build_tool() {
  local name=$1 version pkg out tmp
  version=$(tool_version "$name") || die "unknown tool: $name (helm, kustomize)"
  pkg=$(tool_package "$name")
  out="$CACHE/$name-$version"
  [ -x "$out/$name" ] && return 0
  mkdir -p "$CACHE"
  command -v go >/dev/null || die "go not found: $name is built from the Go module proxy"
  (
    flock 9
    [ -x "$out/$name" ] && exit 0
    log "building $name $version (Go module proxy; a few minutes cold on 2 cores)"
    tmp="$out.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    GOBIN="$tmp" go install -trimpath "$pkg@$version" || { rm -rf "$tmp"; die "$name build failed"; }
    publish_dir "$tmp" "$out"
    log "$name $version built"
  ) 9>"$CACHE/.$name.lock"
}

tool_path() {
  local version
  version=$(tool_version "$1") || die "unknown tool: $1 (helm, kustomize)"
  echo "$CACHE/$1-$version/$1"
}
