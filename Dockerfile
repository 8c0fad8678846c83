# syntax=docker/dockerfile:1
# One image for every service: ws-gateway, master, worker, lock-server,
# file-sync and crawlctl. The base images are build arguments, so the same
# file builds from the public images (the defaults) and from locally made
# ones (scripts/compose-test, on a machine without a registry).

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# The registry and the target folder are cached between builds; the
# binaries are copied out of the cache mount before it is unmounted. They
# ship without debug information or symbols: a sixth of the size.
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p ws-gateway -p master -p worker -p lock-server -p file-sync -p crawlctl \
    && mkdir -p /out \
    && cp target/release/ws-gateway target/release/master target/release/worker \
          target/release/lock-server target/release/file-sync target/release/crawlctl /out/

FROM ${RUNTIME_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin crawler
COPY --from=builder /out/ /usr/local/bin/
# Services listen on every interface in a container; each gRPC service
# serves /healthz, /readyz and /metrics on 9090.
ENV WS_GATEWAY__LISTEN=0.0.0.0:8080 \
    MASTER__LISTEN=0.0.0.0:50052 \
    LOCK_SERVER__LISTEN=0.0.0.0:50051 \
    FILE_SYNC__LISTEN=0.0.0.0:50053 \
    FILE_SYNC__ROOT=/var/lib/crawler/spiders \
    WORKER__SPIDER_DIR=/tmp/spiders \
    CRAWLER__ADMIN_LISTEN=0.0.0.0:9090 \
    CRAWLER__LOG_FORMAT=json
RUN mkdir -p /var/lib/crawler/spiders /var/lib/crawler/tls && chown -R 10001:10001 /var/lib/crawler
USER 10001:10001
EXPOSE 8080 9090 50051 50052 50053
CMD ["crawlctl", "--help"]
