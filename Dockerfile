# syntax=docker/dockerfile:1
# Halyard's image: `halyard` (every role: scheduler, executor, standalone, the CLI) and
# `halyard-s3-server`, on Debian slim, run as a non-root user with a health check on
# /healthz. From the repository root:
#
#   docker build -t halyard --build-arg HALYARD_COMMIT=$(git rev-parse --short=12 HEAD) .
#
# deploy/compose.yaml runs a whole cluster of it; deploy/k8s/ runs it on Kubernetes.

# --- build: the Rust toolchain, the protobuf compiler and mold ---------------------------
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev mold \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The commit `halyard --version` prints (the build context has no .git).
ARG HALYARD_COMMIT=unknown
ENV HALYARD_COMMIT=${HALYARD_COMMIT} \
    RUSTFLAGS="-C link-arg=-fuse-ld=mold" \
    CARGO_TARGET_DIR=/target
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/target \
    cargo build --release --locked --bin halyard --bin halyard-s3-server \
 && mkdir -p /out \
 && cp /target/release/halyard /target/release/halyard-s3-server /out/

# --- runtime: the binaries, CA roots for S3 over TLS, curl for the health check ----------
# (/var/lib/halyard/s3 and /data exist owned by the user, so that volumes mounted there
# start writable by it.)
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/halyard --create-home halyard \
 && mkdir -p /var/lib/halyard/s3 /data \
 && chown halyard:halyard /var/lib/halyard/s3 /data
COPY --from=build /out/ /usr/local/bin/
COPY deploy/docker/healthcheck.sh /usr/local/bin/halyard-healthcheck
USER 10001:10001
WORKDIR /var/lib/halyard
ENV HALYARD_DATA_DIR=/var/lib/halyard
# Schedulers' API and console (7070), executors' API (7071), the S3 server (9000).
EXPOSE 7070 7071 9000
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 \
    CMD ["halyard-healthcheck"]
ENTRYPOINT ["halyard"]
CMD ["--help"]
