# syntax=docker/dockerfile:1
# etcdmon-collector: agent streams in (gRPC), ClickHouse or SQLite, the REST
# API, /metrics and /healthz (docs/collector.md).
#
#   docker build -f deploy/docker/etcdmon-collector.Dockerfile -t example.invalid/etcd-monitor/etcdmon-collector:0.1.0 .
#   docker run -v $PWD/collector.toml:/etc/etcdmon/collector.toml:ro --read-only -p 7070:7070 -p 8080:8080 \
#     example.invalid/etcd-monitor/etcdmon-collector:0.1.0
#
# Build context: the repository root (see /.dockerignore). The config file
# must listen on 0.0.0.0 (http.listen defaults to 127.0.0.1:8080, which is
# unreachable from outside the container). The image sets no ETCDMON_*
# variables on purpose: they would override the config file.

# ---- build ------------------------------------------------------------------
FROM rust:1.89-bookworm AS builder
# protoc and the well-known .proto files: etcd-client's build script imports
# google/protobuf/descriptor.proto (the same packages scripts/setup installs).
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# --locked: exactly the versions in Cargo.lock. The caches only speed up
# rebuilds; the binary leaves the cached target dir within this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p etcdmon-collector \
    && install -m 0755 target/release/etcdmon-collector /usr/local/bin/etcdmon-collector

# ---- runtime ----------------------------------------------------------------
# The builder's Debian release, so the binary finds the glibc it was linked
# against. For bit-for-bit rebuilds pin this tag by digest (@sha256:...).
FROM debian:bookworm-slim
# ca-certificates: clickhouses:// and NATS over TLS trust the system's roots
# unless the config names a CA file.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 etcdmon \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin etcdmon \
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/etcdmon
COPY --from=builder /usr/local/bin/etcdmon-collector /usr/local/bin/etcdmon-collector
# Numeric, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 65532:65532
# Only the embedded store writes (storage.url = "sqlite:etcdmon.sqlite" is
# relative to this directory); with ClickHouse nothing is written at all, so
# the root filesystem can be read-only either way.
WORKDIR /var/lib/etcdmon
VOLUME ["/var/lib/etcdmon"]
# 7070: agents' gRPC streams (grpc.listen). 8080: REST API, web page,
# /metrics, /healthz (http.listen).
EXPOSE 7070 8080
# No curl in the image: bash's /dev/tcp speaks the one HTTP request. /healthz
# answers 503 once storage writes have failed for ingest.unhealthy_after.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# SIGTERM: stop the rules, drain the writer, publish the outbox within
# shutdown_grace (10 s): run with `docker stop -t 60` (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/etcdmon-collector"]
CMD ["--config", "/etc/etcdmon/collector.toml"]
