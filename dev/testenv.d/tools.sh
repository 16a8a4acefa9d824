# Tools the tests use — helm, kustomize (from the Go module proxy) and cargo-deny (from
# crates.io) — cached like the services of dev/testenv:
# ${XDG_CACHE_HOME:-~/.cache}/kubewire/<name>-<version>/<name>.
# Sourced by dev/tools; tests call `dev/tools path <name>`, which builds on first use.

HELM_VERSION=v3.22.0       # helm.sh/helm/v3 (go 1.26.0 — builds with a local Go >= 1.26)
KUSTOMIZE_VERSION=v5.8.2   # sigs.k8s.io/kustomize/kustomize/v5 (v5.8.3 needs go 1.27)
CARGO_DENY_VERSION=0.20.2  # crates.io cargo-deny (licences, bans, sources in dev/test)

tool_version() {
  case $1 in
    helm) echo "$HELM_VERSION" ;;
    kustomize) echo "$KUSTOMIZE_VERSION" ;;
    cargo-deny) echo "$CARGO_DENY_VERSION" ;;
    *) return 1 ;;
  esac
}

tool_package() {
  case $1 in
    helm) echo "helm.sh/helm/v3/cmd/helm" ;;
    kustomize) echo "sigs.k8s.io/kustomize/kustomize/v5" ;;
    cargo-deny) echo "cargo-deny" ;;
    *) return 1 ;;
  esac
}

# build_tool NAME: no-op when cached; otherwise `go install` into a temp dir and publish it
# atomically. Concurrent callers (parallel tests) serialise on a lock so the build runs once.
build_tool() {
  local name=$1 version pkg out tmp
  version=$(tool_version "$name") || die "unknown tool: $name (helm, kustomize, cargo-deny)"
  pkg=$(tool_package "$name")
  out="$CACHE/$name-$version"
  [ -x "$out/$name" ] && return 0
  mkdir -p "$CACHE"
  (
    flock 9
    [ -x "$out/$name" ] && exit 0
    tmp="$out.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    if [ "$name" = cargo-deny ]; then
      log "building $name $version (crates.io; a few minutes cold on 2 cores)"
      cargo install --quiet --locked "$pkg" --version "$version" --root "$tmp/root" &&
        mv "$tmp/root/bin/$name" "$tmp/$name" && rm -rf "$tmp/root" ||
        { rm -rf "$tmp"; die "$name build failed"; }
    else
      command -v go >/dev/null || die "go not found: $name is built from the Go module proxy"
      log "building $name $version (Go module proxy; a few minutes cold on 2 cores)"
      GOBIN="$tmp" go install -trimpath "$pkg@$version" || { rm -rf "$tmp"; die "$name build failed"; }
    fi
    publish_dir "$tmp" "$out"
    log "$name $version built"
  ) 9>"$CACHE/.$name.lock"
}

tool_path() {
  local version
  version=$(tool_version "$1") || die "unknown tool: $1 (helm, kustomize, cargo-deny)"
  echo "$CACHE/$1-$version/$1"
}
