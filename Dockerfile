# The fluxplane image: the one binary, for the control plane (`serve`, the default) and the agent (`agent run`).
# Its tag is the workspace's version (Cargo.toml), the name deploy/ and docker-compose.yml run:
#   docker build -t fluxplane:0.1.0 .
# deploy/README.md says how to load it into kind, minikube or k3d, or push it to a registry.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin fluxplane

FROM debian:bookworm-slim
# git: the agent's dir target fetches Git sources with it; curl: the health check below
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl git \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 fluxplane \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fluxplane --create-home fluxplane
COPY --from=build /src/target/release/fluxplane /usr/local/bin/fluxplane
# numeric, so that Kubernetes' runAsNonRoot can verify it without a runAsUser of its own
USER 10001:10001
WORKDIR /var/lib/fluxplane
ENV FLUXPLANE_LISTEN=0.0.0.0:8080 \
    FLUXPLANE_DATA_DIR=/var/lib/fluxplane \
    FLUXPLANE_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["fluxplane"]
CMD ["serve"]
