# mediagate: build, then a slim runtime as a non-root user.
# Build: docker build -t mediagate .   (not built in this project's CI: its machines run no Docker engine)

FROM rust:1-bookworm AS build
# pingora builds zlib-ng with cmake.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY config ./config
COPY benches ./benches
COPY scripts ./scripts
# The `production` profile (Cargo.toml, fat LTO) with profile-guided optimisation: an
# instrumented build, a training load on loopback, the final build (scripts/build-production).
# The build benches/load/compare.sh measures.
RUN scripts/build-production

FROM debian:bookworm-slim
# ca-certificates: the system roots for an https upstream; curl: the health check.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin mediagate
COPY --from=build /src/target/pgo/mediagate /usr/local/bin/mediagate
COPY config/mediagate.yaml /etc/mediagate/mediagate.yaml
# The reference configuration listens on loopback; in a container the ports are reached from
# outside it (docker run -p 8080:8080 -p 9108:9108): every address. The build fails if the lines
# to change are not there. Cache purges stay loopback-only whatever the address.
RUN sed -i -e 's/^  listen: 127\.0\.0\.1:8080/  listen: 0.0.0.0:8080/' \
      -e 's/^  metrics_listen: 127\.0\.0\.1:9108/  metrics_listen: 0.0.0.0:9108/' \
      /etc/mediagate/mediagate.yaml \
 && grep -q '^  listen: 0\.0\.0\.0:8080' /etc/mediagate/mediagate.yaml \
 && grep -q '^  metrics_listen: 0\.0\.0\.0:9108' /etc/mediagate/mediagate.yaml
USER 10001:10001
# 8080: the sidecar (server.listen); 9108: /metrics, /healthz, /readyz (server.metrics_listen).
EXPOSE 8080 9108
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD curl -fsS http://127.0.0.1:9108/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/mediagate"]
CMD ["proxy", "--config", "/etc/mediagate/mediagate.yaml"]
