# syntax=docker/dockerfile:1
# Multi-stage build: a Rust toolchain compiles the exporter; the final image holds the binary and
# the C runtime it links against, runs as a non-root user and needs no shell.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not refetch crates.
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY benches ./benches
ARG REVISION=unknown
ENV MLFLOW_EXPORTER_BUILD_REVISION=${REVISION}
RUN cargo build --release --locked --bin mlflow-exporter \
 && strip target/release/mlflow-exporter

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/mlflow-exporter /usr/local/bin/mlflow-exporter
USER 65532:65532
EXPOSE 9868
ENTRYPOINT ["/usr/local/bin/mlflow-exporter"]
