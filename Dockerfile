# syntax=docker/dockerfile:1
# Multi-stage build: a Rust toolchain compiles the exporter; the final image holds the binary and
# the C runtime it links against (distroless cc: glibc, libgcc, CA certificates), runs as a non-root
# user and has no shell. tests/lint/deploy.rs lints this file with hadolint and checks that the
# build context it copies is complete.
#   docker build -t mlflow-exporter:0.1.0 --build-arg REVISION="$(git rev-parse --short=12 HEAD)" .

# Debian 12 (bookworm) in both stages: the binary links against the glibc of the final image.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
# What `cargo build` reads, and nothing else (.dockerignore keeps target/ and .venv/ out).
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
# The revision in mlflow_exporter_build_info (there is no .git in the build context).
ARG REVISION=unknown
ENV MLFLOW_EXPORTER_BUILD_REVISION=${REVISION}
# Crates and build output are cached between builds (BuildKit); the binary is copied out of the
# cache mount into /out, with the empty data directory the final stage owns.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mlflow-exporter \
 && mkdir -p /out/data \
 && cp target/release/mlflow-exporter /out/mlflow-exporter \
 && strip /out/mlflow-exporter

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="mlflow-exporter" \
      org.opencontainers.image.description="Prometheus exporter for MLflow: adoption, delivery, cost and reliability metrics of an ML platform" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/mlflow-exporter /usr/local/bin/mlflow-exporter
# The event store (SQLite): mount a volume here to keep the delivery history across restarts.
COPY --from=build --chown=65532:65532 /out/data /data
ENV MLFLOW_EXPORTER_STORAGE__PATH=/data/mlflow-exporter.db
VOLUME ["/data"]
# distroless "nonroot"; Kubernetes' runAsUser and compose's user are the same.
USER 65532:65532
EXPOSE 9868
ENTRYPOINT ["/usr/local/bin/mlflow-exporter"]
