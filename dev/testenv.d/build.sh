# Build functions of dev/testenv: each one produces binaries or jars under $CACHE keyed by
# version, and is a no-op when the cached result exists. Sourced by dev/testenv.

# GOTOOLCHAIN=local: a dependency's `toolchain` line must never trigger a toolchain download.
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false

log() { printf '[testenv %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[testenv] error: %s\n' "$*" >&2; exit 1; }

# Atomically publish a finished build dir: a half-built cache entry must never look complete.
publish_dir() { # tmpdir finaldir
  rm -rf "$2" && mv "$1" "$2"
}

build_etcd() {
  local out="$CACHE/etcd-$ETCD_VERSION"
  [ -x "$out/etcd" ] && [ -x "$out/etcdctl" ] && return 0
  log "building etcd $ETCD_VERSION (Go module proxy)"
  local src="$CACHE/src/etcd-$ETCD_VERSION" tmp="$out.tmp.$$"
  rm -rf "$src" && mkdir -p "$src/etcd" "$src/etcdctl" "$tmp"
  # etcd's own module has replace directives, so `go install` fails; wrap its mains instead.
  cat >"$src/go.mod" <<GOMOD
module kubewire.local/etcdbuild

go 1.25.0
GOMOD
  cat >"$src/etcd/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  cat >"$src/etcdctl/main.go" <<'GO'
package main

import "go.etcd.io/etcd/etcdctl/v3/ctlv3"

func main() { ctlv3.MustStart() }
GO
  (cd "$src" &&
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" "go.etcd.io/etcd/etcdctl/v3@$ETCD_VERSION" >/dev/null &&
    go mod tidy >/dev/null &&
    go build -trimpath -o "$tmp/etcd" ./etcd &&
    go build -trimpath -o "$tmp/etcdctl" ./etcdctl) || die "etcd build failed"
  publish_dir "$tmp" "$out"
  log "etcd $ETCD_VERSION built"
}

build_nats() {
  local out="$CACHE/nats-server-$NATS_VERSION"
  [ -x "$out/nats-server" ] && return 0
  log "building nats-server $NATS_VERSION (Go module proxy)"
  local tmp="$out.tmp.$$"
  mkdir -p "$tmp"
  GOBIN="$tmp" go install "github.com/nats-io/nats-server/v2@$NATS_VERSION" || die "nats-server build failed"
  publish_dir "$tmp" "$out"
  log "nats-server $NATS_VERSION built"
}

build_kube() {
  local out="$CACHE/kubernetes-$KUBE_VERSION"
  [ -x "$out/kube-apiserver" ] && [ -x "$out/kubectl" ] && return 0
  log "building kube-apiserver and kubectl $KUBE_VERSION (Go module proxy; 10-20 min cold on 2 cores)"
  local src="$CACHE/src/kubernetes-$KUBE_VERSION" tmp="$out.tmp.$$"
  local staging_version="v0.${KUBE_VERSION#v1.}"
  rm -rf "$src" && mkdir -p "$src" "$tmp"
  # k8s.io/kubernetes points its staging modules at ./staging/...; a wrapper module replaces
  # each one with its published tag, read from the go.mod the proxy serves for this release.
  local gomod
  gomod=$(cd "$src" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [ -f "$gomod" ] || die "could not download k8s.io/kubernetes@$KUBE_VERSION's go.mod"
  {
    echo "module kubewire.local/kubebuild"
    echo
    grep -m1 '^go ' "$gomod"
    echo
    echo "require k8s.io/kubernetes $KUBE_VERSION"
    echo
    echo "replace ("
    sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\t\1 => \1 '"$staging_version"'#p' "$gomod"
    echo ")"
  } >"$src/go.mod"
  local ldflags pkg=k8s.io/component-base/version cpkg=k8s.io/client-go/pkg/version
  local minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
  local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  ldflags="-s -w"
  for p in $pkg $cpkg; do
    ldflags+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=$date"
  done
  (cd "$src" &&
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" "k8s.io/kubernetes/cmd/kubectl@$KUBE_VERSION" &&
    log "kubernetes modules resolved; compiling kube-apiserver" &&
    go build -trimpath -ldflags "$ldflags" -o "$tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver &&
    log "compiling kubectl" &&
    go build -trimpath -ldflags "$ldflags" -o "$tmp/kubectl" k8s.io/kubernetes/cmd/kubectl) ||
    die "kubernetes build failed (wrapper module in $src)"
  publish_dir "$tmp" "$out"
  log "kubernetes $KUBE_VERSION built"
}

build_kafka() {
  local out="$CACHE/kafka-$KAFKA_VERSION"
  # The slf4j-api check makes caches from before the explicit slf4j 2 pin rebuild themselves.
  [ -f "$out/.complete" ] && [ -f "$out/libs/slf4j-api-$SLF4J_VERSION.jar" ] && return 0
  command -v mvn >/dev/null || die "mvn not found: Kafka's jars are resolved from Maven Central with Maven"
  log "resolving Apache Kafka $KAFKA_VERSION jars (Maven Central)"
  local src="$CACHE/src/kafka-$KAFKA_VERSION" tmp="$out.tmp.$$"
  rm -rf "$src" && mkdir -p "$src" "$tmp"
  cat >"$src/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.kubewire</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
    <!-- kafka_2.13 pulls slf4j-api 1.7, which cannot see the slf4j2 binding: pin the 2.x API. -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
  </dependencies>
</project>
POM
  (cd "$src" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$tmp/libs" -DincludeScope=runtime) ||
    die "resolving Kafka jars failed (pom in $src)"
  touch "$tmp/.complete"
  publish_dir "$tmp" "$out"
  log "kafka $KAFKA_VERSION jars ready"
}

build_all() {
  build_etcd
  build_nats
  build_kafka
  build_kube
}
