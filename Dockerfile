# One image for the operator and the agent its snapshot pods run.
# Build: docker build -t snapcrypt:latest .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin snapcrypt

FROM debian:bookworm-slim
LABEL org.opencontainers.image.title="snapcrypt" \
      org.opencontainers.image.description="Encrypted, deduplicated snapshots of MongoDB data volumes with master keys in KMIP" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/snapcrypt /usr/local/bin/snapcrypt
# Non-root; pods also set runAsNonRoot and a read-only root filesystem (tmp is an emptyDir).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/snapcrypt"]
