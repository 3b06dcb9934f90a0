# syntax=docker/dockerfile:1
# etcdmon-alerter: alert candidates from NATS JetStream become notifications
# (webhook, Slack, PagerDuty, email; docs/notifications.md).
#
#   docker build -f deploy/docker/etcdmon-alerter.Dockerfile -t example.invalid/etcd-monitor/etcdmon-alerter:0.1.0 .
#
# Build context: the repository root (see /.dockerignore). Receiver secrets
# are files (the config's *_file fields): mount them, never bake them in.
# The config must set http.listen = "0.0.0.0:8090" to be reachable from
# outside the container. The image sets no ETCDMON_* variables on purpose:
# they would override the config file. Run exactly one alerter per NATS
# consumer.

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
    cargo build --release --locked -p etcdmon-alerter \
    && install -m 0755 target/release/etcdmon-alerter /usr/local/bin/etcdmon-alerter

# ---- runtime ----------------------------------------------------------------
# The builder's Debian release, so the binary finds the glibc it was linked
# against. For bit-for-bit rebuilds pin this tag by digest (@sha256:...).
FROM debian:bookworm-slim
# ca-certificates: Slack, PagerDuty, https webhooks and SMTP with TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 etcdmon \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin etcdmon \
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/etcdmon
COPY --from=builder /usr/local/bin/etcdmon-alerter /usr/local/bin/etcdmon-alerter
# Numeric, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 65532:65532
# Only an embedded (SQLite) store shared with `etcdmon up` writes here; with
# ClickHouse nothing is written, so the root filesystem can be read-only.
WORKDIR /var/lib/etcdmon
VOLUME ["/var/lib/etcdmon"]
# 8090: /metrics and /healthz (http.listen).
EXPOSE 8090
# No curl in the image: bash's /dev/tcp speaks the one HTTP request. /healthz
# answers 503 once store calls have failed for 30 s.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8090 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# SIGTERM: stop taking candidates and let attempts in flight finish: run with
# `docker stop -t 60` (compose: stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/etcdmon-alerter"]
CMD ["--config", "/etc/etcdmon/alerter.toml"]
