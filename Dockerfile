# syntax=docker/dockerfile:1
# Multi-stage build: a Rust toolchain compiles the exporter; the final image holds the binary and
# the C runtime it links against, runs as a non-root user and needs no shell.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not refetch crates.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY migrations ./migrations
COPY benches ./benches
ARG REVISION=unknown
ENV MLFLOW_EXPORTER_BUILD_REVISION=${REVISION}
RUN cargo build --release --locked --bin mlflow-exporter \
 && strip target/release/mlflow-exporter \
 && mkdir -p /out/data

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mlflow-exporter /usr/local/bin/mlflow-exporter
# The delivery history (SQLite): mount a volume here to keep it across restarts.
COPY --from=build --chown=65532:65532 /out/data /data
ENV MLFLOW_EXPORTER_STORAGE__PATH=/data/mlflow-exporter.db
VOLUME ["/data"]
USER 65532:65532
EXPOSE 9868
ENTRYPOINT ["/usr/local/bin/mlflow-exporter"]
