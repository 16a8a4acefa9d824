# The OpenTelemetry Collector of dev/testenv: an optional service (`dev/testenv up otelcol`),
# built with the OpenTelemetry Collector Builder from the Go module proxy and cached like the
# other services under $CACHE/otelcol-<version>/. Sourced by dev/testenv after build.sh.
#
# One binary for every use in the repo:
#   - OTLP receiver + file exporter + debug exporter: kubewire's trace tests (tests/traces.rs)
#   - k8sobjects receiver + kafka exporter (contrib): the end-to-end benchmark's peer pipeline
#
# Versions: one release for every module. The contrib modules kubewire needs are served by the
# module proxy at v0.148.0 (k8sobjectsreceiver is not served at any newer release), and every
# module of that release needs Go 1.25, so the machine's Go builds it with GOTOOLCHAIN=local.
# Core components are versioned v0.x, the stable confmap providers v1.x of the same release.
OTELCOL_VERSION=v0.148.0        # go.opentelemetry.io/collector (cmd/builder, components) and contrib
OTELCOL_STABLE_VERSION=v1.54.0  # go.opentelemetry.io/collector/confmap/provider/* of that release

OTELCOL_DIR="$CACHE/otelcol-$OTELCOL_VERSION"
OTELCOL_BIN="$OTELCOL_DIR/otelcol-kubewire"

build_otelcol() {
  [ -x "$OTELCOL_BIN" ] && return 0
  command -v go >/dev/null || die "go not found: the collector is built from the Go module proxy"
  mkdir -p "$CACHE"
  (
    # Parallel callers (tests that each `up otelcol`) build once.
    flock 8
    [ -x "$OTELCOL_BIN" ] && exit 0
    local t0=$SECONDS src="$CACHE/src/otelcol-$OTELCOL_VERSION" tmp="$OTELCOL_DIR.tmp.$$"
    log "building otelcol-kubewire $OTELCOL_VERSION with the Collector Builder (Go module proxy; ~6 min cold on 2 cores)"
    rm -rf "$src" "$tmp" && mkdir -p "$src/bin" "$tmp"
    GOBIN="$src/bin" go install -trimpath "go.opentelemetry.io/collector/cmd/builder@$OTELCOL_VERSION" ||
      die "installing the Collector Builder $OTELCOL_VERSION failed"
    # The checksum database the module proxy relays has no entries for many of the collector's
    # modules at this release (404 on lookup), so the OTel modules alone skip that check; go.sum
    # still pins what the proxy served, and every other module is verified as usual.
    export GONOSUMDB=go.opentelemetry.io/collector,github.com/open-telemetry/opentelemetry-collector-contrib
    local core=go.opentelemetry.io/collector contrib=github.com/open-telemetry/opentelemetry-collector-contrib
    cat >"$src/manifest.yaml" <<EOF
# Written by dev/testenv.d/otelcol.sh: the Collector Builder manifest of otelcol-kubewire.
dist:
  module: kubewire.local/otelcol
  name: otelcol-kubewire
  description: OpenTelemetry Collector for kubewire's test environment and benchmarks
  version: $OTELCOL_VERSION
  output_path: $src/out
receivers:
  - gomod: $core/receiver/otlpreceiver $OTELCOL_VERSION
  - gomod: $contrib/receiver/k8sobjectsreceiver $OTELCOL_VERSION
processors:
  - gomod: $core/processor/batchprocessor $OTELCOL_VERSION
exporters:
  - gomod: $core/exporter/debugexporter $OTELCOL_VERSION
  - gomod: $contrib/exporter/fileexporter $OTELCOL_VERSION
  - gomod: $contrib/exporter/kafkaexporter $OTELCOL_VERSION
providers:
  - gomod: $core/confmap/provider/envprovider $OTELCOL_STABLE_VERSION
  - gomod: $core/confmap/provider/fileprovider $OTELCOL_STABLE_VERSION
  - gomod: $core/confmap/provider/yamlprovider $OTELCOL_STABLE_VERSION
EOF
    # The builder generates the sources, resolves modules (go get / go mod tidy: the slow,
    # network part) and runs `go build`. Its whole output goes to $src/build.log; the steps are
    # echoed as they happen.
    if ! (cd "$src" && "$src/bin/builder" --config "$src/manifest.yaml" --verbose --ldflags="-s -w" 2>&1) |
      tee "$src/build.log" | while IFS= read -r line; do
        case $line in
          *"Getting go modules"* | *"Compiling"* | *"Compiled"* | Error:*) log "otelcol build: ${line:0:240}" ;;
        esac
      done; then
      die "otelcol build failed; see $src/build.log"
    fi
    [ -x "$src/out/otelcol-kubewire" ] || die "otelcol build produced no binary; see $src/build.log"
    mv "$src/out/otelcol-kubewire" "$tmp/otelcol-kubewire"
    cp "$src/manifest.yaml" "$tmp/manifest.yaml"
    publish_dir "$tmp" "$OTELCOL_DIR"
    log "otelcol-kubewire $OTELCOL_VERSION built in $((SECONDS - t0))s"
  ) 8>"$CACHE/.otelcol.lock" || exit 1
}

# Where the running collector writes: one JSON object per line (OTLP/JSON ExportTraceServiceRequest).
otelcol_traces_file() { echo "$TD/otelcol/traces.jsonl"; }

start_otelcol() {
  mkdir -p "$TD/otelcol"
  cat >"$TD/otelcol/config.yaml" <<EOF
# Written by dev/testenv: OTLP in on loopback, every span to a JSON-lines file (and a count
# to the log). The k8sobjects receiver and kafka exporter are in the binary for benchmarks,
# which run their own collector config against \$OTEL_COLLECTOR_BIN.
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$OTELCOL_GRPC_PORT
      http:
        endpoint: 127.0.0.1:$OTELCOL_HTTP_PORT
exporters:
  file:
    path: $(otelcol_traces_file)
    format: json
    flush_interval: 200ms
  debug:
    verbosity: basic
service:
  telemetry:
    # No self-metrics endpoint (it would listen on :8888).
    metrics:
      level: none
    logs:
      level: info
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file, debug]
EOF
  launch otelcol "$OTELCOL_BIN" --config "$TD/otelcol/config.yaml"
}

# Ready once the OTLP gRPC port accepts (the receiver opens it after the pipeline has started).
ready_otelcol() { port_open "$OTELCOL_GRPC_PORT"; }

otelcol_env_lines() {
  cat <<EOF
export OTEL_COLLECTOR_ENDPOINT="http://127.0.0.1:$OTELCOL_GRPC_PORT"
export OTEL_COLLECTOR_HTTP_ENDPOINT="http://127.0.0.1:$OTELCOL_HTTP_PORT"
export OTEL_COLLECTOR_TRACES_FILE="$(otelcol_traces_file)"
export OTEL_COLLECTOR_BIN="$OTELCOL_BIN"
EOF
}
