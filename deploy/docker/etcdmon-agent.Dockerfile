# syntax=docker/dockerfile:1
# etcdmon-agent: runs beside one etcd member (docs/agent.md).
#
#   docker build -f deploy/docker/etcdmon-agent.Dockerfile -t example.invalid/etcd-monitor/etcdmon-agent:0.1.0 .
#
# Build context: the repository root (see /.dockerignore). The image holds
# the one binary, CA certificates and nothing else; it runs as an
# unprivileged user with a read-only root filesystem. Beside a real member
# the agent needs more than that user has (etcd's /proc, its data dir):
# deploy/kubernetes/agent.yaml and deploy/compose/compose.yaml run it as
# uid 0 with every capability dropped but CAP_SYS_PTRACE, and say why.

# ---- build ------------------------------------------------------------------
FROM rust:1.89-bookworm AS builder
# protoc and the well-known .proto files: etcd-client's build script imports
# google/protobuf/descriptor.proto (the same packages scripts/setup installs).
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# --locked: exactly the versions in Cargo.lock; --profile agent: release,
# optimised for size (the agent's RSS is mostly its own code, see Cargo.toml).
# The caches only speed up rebuilds; the binary leaves the cached target dir
# within this step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile agent --locked -p etcdmon-agent \
    && install -m 0755 target/agent/etcdmon-agent /usr/local/bin/etcdmon-agent

# ---- runtime ----------------------------------------------------------------
# The builder's Debian release, so the binary finds the glibc it was linked
# against. For bit-for-bit rebuilds pin this tag by digest (@sha256:...).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 65532 etcdmon \
    && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin etcdmon \
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/etcdmon-agent
COPY --from=builder /usr/local/bin/etcdmon-agent /usr/local/bin/etcdmon-agent
# Numeric, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 65532:65532
# The spool of unacknowledged batches (upstream.spool_dir) must outlive the
# container: nothing else is written, so the root filesystem can be read-only.
VOLUME ["/var/lib/etcdmon-agent"]
ENV ETCDMON_AGENT_UPSTREAM__SPOOL_DIR=/var/lib/etcdmon-agent/spool
# The agent's own /metrics and /healthz (http.listen; its default,
# 127.0.0.1:9479, is reachable only from inside the container's network
# namespace, which is where the health check runs).
EXPOSE 9479
# No curl in the image: bash's /dev/tcp speaks the one HTTP request.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9479 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# SIGTERM: the agent waits upstream.shutdown_grace (5 s) for the last acks and
# spools the rest; give `docker stop` at least that (the default 10 s is).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/etcdmon-agent"]
CMD ["--config", "/etc/etcdmon/agent.toml", "run"]
