# syntax=docker/dockerfile:1
# kubewire container image: a multi-stage build.
#
#   docker build -t kubewire:dev .
#   docker run --rm kubewire:dev --version
#
# The runtime stage is distroless (glibc, libgcc, CA certificates; no shell, no package
# manager) and runs as the non-root user 65532. OpenSSL and zlib, which librdkafka uses, are
# linked statically (see the ENV below); librdkafka itself and zstd are built from source by
# their -sys crates and linked statically too. So the image needs no system packages beyond
# what the distroless cc image carries. tests/deploy.rs checks these claims against a local
# build (docs/deploy.md).

ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
# The commit `kubewire --version` names (the build context has no .git):
#   docker build --build-arg KUBEWIRE_BUILD_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG KUBEWIRE_BUILD_COMMIT=
WORKDIR /src
# Static OpenSSL from Debian's libssl-dev (it ships the .a files). OPENSSL_STATIC only counts
# when openssl-sys is given the directories: through pkg-config it links a system OpenSSL
# dynamically whatever OPENSSL_STATIC says. OPENSSL_LIB_DIR is per architecture (set in RUN).
ENV OPENSSL_STATIC=1 \
    OPENSSL_INCLUDE_DIR=/usr/include \
    LIBZ_SYS_STATIC=1 \
    CARGO_TERM_COLOR=never
COPY . .
# The cache mounts keep the registry and target dir between builds (BuildKit); the binary is
# copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    OPENSSL_LIB_DIR="/usr/lib/$(gcc -dumpmachine)" \
    cargo build --release --locked --bin kubewire \
 && install -D -m 0755 target/release/kubewire /out/kubewire \
 && mkdir -p /out/data
RUN /out/kubewire --version

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/kubewire /usr/local/bin/kubewire
# The checkpoint directory, owned by the runtime user (a named volume mounted here inherits it).
COPY --from=build --chown=65532:65532 /out/data /var/lib/kubewire
USER 65532:65532
WORKDIR /var/lib/kubewire
ENTRYPOINT ["/usr/local/bin/kubewire"]
CMD ["run", "--config", "/etc/kubewire/config.yaml"]
