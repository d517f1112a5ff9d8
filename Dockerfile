# One image for the operator, the agent its pods run, and `kubectl snapcrypt check` (the chart's
# `helm test`). tests/cluster/image.sh builds the same image with no registry: the same
# stripped binary, C libraries, CA bundle, user, entrypoint and labels (tests/README.md).
#
#   docker build --build-arg VERSION=0.1.0 -t snapcrypt:0.1.0 .
#   docker build --target debug-info -o out .     # out/snapcrypt.debug, for crash reports
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The release profile keeps debug info (for profiling): split it off into snapcrypt.debug and
# ship the binary stripped, with a link to that file for debuggers.
RUN cargo build --release --locked --bin snapcrypt \
    && cd target/release \
    && objcopy --only-keep-debug snapcrypt snapcrypt.debug \
    && objcopy --strip-all --add-gnu-debuglink=snapcrypt.debug snapcrypt

FROM scratch AS debug-info
COPY --from=build /src/target/release/snapcrypt.debug /

# glibc, libgcc_s and the CA bundle (the object-store clients need roots), a non-root numeric
# user (65532), no shell and no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="snapcrypt" \
      org.opencontainers.image.description="Encrypted, deduplicated snapshots of MongoDB data volumes with master keys in KMIP" \
      org.opencontainers.image.source="https://github.com/snapcrypt/snapcrypt" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /src/target/release/snapcrypt /usr/local/bin/snapcrypt
# Pods also set runAsNonRoot and a read-only root filesystem (/tmp is an emptyDir).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/snapcrypt"]
