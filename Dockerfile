# Milena: one image with both servers and the CLI.
#   docker build -t milena-router:latest -t milena-cache:latest .
# The default command runs the router; cache nodes run ./milena-cache
# (docker/docker-compose.yml and docker/k8s/ do).

# --- dependencies, cached apart from the sources (cargo-chef) ---------
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.73
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --recipe-path recipe.json \
      --bin milena-router --bin milena-cache --bin milena-cli
COPY . .
RUN cargo build --release --locked --bin milena-router --bin milena-cache --bin milena-cli

# --- runtime -----------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin milena \
 && mkdir -p /app /data && chown milena /app /data
WORKDIR /app
COPY --from=builder /src/target/release/milena-router /src/target/release/milena-cache /src/target/release/milena-cli /app/
USER milena
ENV LISTEN_ADDR=0.0.0.0:50050 LOG_LEVEL=info
EXPOSE 50050 50051 9091
# Both servers answer the binary-protocol ping on LISTEN_ADDR's port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/bin/sh", "-c", "./milena-cli --addr http://127.0.0.1:${LISTEN_ADDR##*:} ping"]
# SIGTERM: nodes leave the ring and flush their write-behind queue.
STOPSIGNAL SIGTERM
CMD ["./milena-router"]
