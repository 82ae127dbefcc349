# syntax=docker/dockerfile:1
# omnichat-bridge: a multi-stage build. cargo-chef caches the dependency build in its own layer,
# so a change to the bridge's code rebuilds only the bridge. The runtime image is distroless
# (glibc, libssl, no shell), runs as a non-root user, and holds one binary.

ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS chef
# librdkafka is built from source (C, make, perl); OpenSSL for TLS and SASL.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential perl pkg-config libssl-dev \
    && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --version 0.1.78 --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --bin omnichat-bridge

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="omnichat-bridge" \
      org.opencontainers.image.description="Publishes OmniChat webhooks to Kafka as keyed CloudEvents, acknowledging only what is stored" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/omnichat-bridge/omnichat-bridge"
COPY --from=builder /src/target/release/omnichat-bridge /usr/local/bin/omnichat-bridge
# 65532 is distroless's `nonroot` user; numeric so Kubernetes can verify runAsNonRoot.
USER 65532:65532
EXPOSE 8080 9090
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/omnichat-bridge", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/omnichat-bridge"]
