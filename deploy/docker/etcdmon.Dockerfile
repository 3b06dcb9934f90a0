# syntax=docker/dockerfile:1
# etcdmon: the command line (`up`, `maintenance`, and the operator's tools
# as they are added).
#
#   docker build -f deploy/docker/etcdmon.Dockerfile -t example.invalid/etcd-monitor/etcdmon:0.1.0 .
#   # a first look at an etcd reachable as etcd:2379, the API on port 8080:
#   docker run --read-only -v etcdmon:/var/lib/etcdmon -p 127.0.0.1:8080:8080 \
#     -e ETCDMON_COLLECTOR_HTTP__AUTH__ANONYMOUS=viewer \
#     example.invalid/etcd-monitor/etcdmon:0.1.0 up --etcd http://etcd:2379 --listen 0.0.0.0:8080
#
# `up` gives anonymous callers admin rights only on a loopback listener; on
# 0.0.0.0 it needs API tokens or an anonymous viewer (ETCDMON_COLLECTOR_HTTP__AUTH__*).
# Build context: the repository root (see /.dockerignore).

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
    cargo build --release --locked -p etcdmon \
    && install -m 0755 target/release/etcdmon /usr/local/bin/etcdmon

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
    && install -d -o 65532 -g 65532 -m 0700 /var/lib/etcdmon
COPY --from=builder /usr/local/bin/etcdmon /usr/local/bin/etcdmon
# Numeric, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 65532:65532
# `up`'s embedded store and its agents' spools (--data-dir): the only writes.
WORKDIR /var/lib/etcdmon
VOLUME ["/var/lib/etcdmon"]
# 8080: `up`'s API, web page, /metrics and /healthz (--listen).
EXPOSE 8080
# No HEALTHCHECK: other subcommands run once and exit. For a long-running
# `up`, add one on its /healthz (docker run --health-cmd, as in
# etcdmon-collector.Dockerfile).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/etcdmon"]
CMD ["--help"]
