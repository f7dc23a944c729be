# fluxplane control plane image: `docker build -t fluxplane .`
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin fluxplane

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl git \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/fluxplane --create-home fluxplane
COPY --from=build /src/target/release/fluxplane /usr/local/bin/fluxplane
USER fluxplane
WORKDIR /var/lib/fluxplane
ENV FLUXPLANE_LISTEN=0.0.0.0:8080 \
    FLUXPLANE_DATA_DIR=/var/lib/fluxplane \
    FLUXPLANE_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["fluxplane"]
CMD ["serve"]
