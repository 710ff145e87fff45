# perch's container image: a release build on the Rust image for Debian bookworm, then
# a small bookworm-slim runtime that runs it as a non-root user.
#
#   docker build -t perch .
#   docker run -d -p 127.0.0.1:8080:8080 -v perch-data:/data \
#     -e PERCH_ADMIN_TOKEN=… -e PERCH_EVENTS_SECRET=… perch
#   docker run --rm -e PERCH_ADMIN_TOKEN=… -e PERCH_EVENTS_SECRET=… perch check
#
# The config is /etc/perch/perch.toml (deploy/perch.toml; mount your own over it, as
# compose.yaml does); the store lives in the /data volume. Plain Dockerfile syntax (no
# BuildKit-only features), so the legacy builder builds it too.

# The toolchain perch is developed with (Cargo.toml's rust-version is the minimum).
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: a change to perch's code then rebuilds only
# perch. The stub targets stand in for perch's own sources until they are copied.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/loadgen.rs \
 && echo 'fn main() {}' > benches/sled_probe.rs \
 && cargo build --release --locked --bin perch \
 && rm -rf src benches
COPY . .
# touch: the stubs above are newer than the real sources' copied mtimes would suggest.
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin perch \
 && install -D -m 0755 target/release/perch /out/perch

FROM debian:bookworm-slim
# ca-certificates: reqwest (rustls-platform-verifier) reads the OS trust store to reach
# Feishu, Slack and internal HTTPS APIs. curl: the health check below. Unpinned on
# purpose: a rebuild should pick up bookworm's security updates of both.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
# A fixed uid/gid, so a bind-mounted /data can be chowned to it on the host.
RUN groupadd --system --gid 10001 perch \
 && useradd --system --uid 10001 --gid perch --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin perch \
 && install -d -o perch -g perch -m 0750 /data
COPY --from=build /out/perch /usr/local/bin/perch
COPY cards /usr/share/perch/cards
COPY deploy/perch.toml /etc/perch/perch.toml
# Every subcommand (`docker run … perch check`, `… schedule`) reads the same config.
ENV PERCH_CONFIG=/etc/perch/perch.toml
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8080
# /healthz answers 503 while the store refuses writes (a full disk): then unhealthy.
HEALTHCHECK --interval=30s --timeout=3s --start-period=15s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/healthz"]
# perch handles SIGTERM itself (drains in-flight work, flushes the store).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/perch"]
CMD ["serve", "--config", "/etc/perch/perch.toml"]
