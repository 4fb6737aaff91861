# syntax=docker/dockerfile:1
# The MCU server in a container: `docker compose up -d` (see docker-compose.yml and
# docs/deploy.md). Two stages: Rust and the GStreamer development packages build the binary
# (the web client is compiled into it); a slim Debian 12 root with only the runtime GStreamer
# packages runs it. Both install from the package lists in .ci/, as `make run` does, and
# `make test` checks the runtime stage's provisioning in a debootstrap root without Docker.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY .ci/install-packages.sh .ci/packages-build.txt .ci/
RUN .ci/install-packages.sh .ci/packages-build.txt
# Dependencies are fetched in their own layer, so a change to the sources does not fetch again.
# (cargo fetch only needs each workspace member's manifest and a target to exist.)
COPY Cargo.toml Cargo.lock ./
COPY crates/mcu-server/Cargo.toml crates/mcu-server/
COPY crates/mcu-probe/Cargo.toml crates/mcu-probe/
RUN for dir in src crates/mcu-server/src crates/mcu-probe/src; do mkdir -p $dir; done \
    && touch src/main.rs crates/mcu-server/src/lib.rs crates/mcu-probe/src/lib.rs \
    && cargo fetch --locked \
    && rm -r src crates/mcu-server/src crates/mcu-probe/src
COPY src src
COPY crates crates
COPY pipelines pipelines
COPY web web
# The cache mounts keep compiled dependencies between builds (BuildKit, Docker's default builder).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mcu && cp target/release/mcu /usr/local/bin/mcu

FROM debian:bookworm-slim AS runtime
COPY .ci/install-packages.sh .ci/packages-runtime.txt .ci/provision-runtime.sh /tmp/mcu-setup/
RUN /tmp/mcu-setup/provision-runtime.sh && rm -rf /tmp/mcu-setup
COPY --from=build /usr/local/bin/mcu /usr/local/bin/mcu
USER mcu
WORKDIR /var/lib/mcu
# Fails the build if a GStreamer element the pipelines use is missing from the runtime packages.
RUN mcu doctor

# Every flag of `mcu serve` also reads an MCU_* variable (README, "Configuration"). These are
# the container's defaults; docker-compose.yml adds TLS and the public address.
ENV MCU_LISTEN=0.0.0.0:8080 \
    MCU_UDP_PORT=50000 \
    MCU_RECORDINGS_DIR=/var/lib/mcu/recordings \
    RUST_LOG=info
# HTTP(S) and WebSocket signalling (8080 plain, 8443 by convention with TLS), and all media
# multiplexed on one UDP port.
EXPOSE 8080/tcp 8443/tcp 50000/udp
VOLUME ["/var/lib/mcu/recordings"]
# `mcu health` reads the same MCU_LISTEN/MCU_TLS_* as the server, and speaks HTTPS when it does.
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 CMD ["mcu", "health"]
ENTRYPOINT ["mcu"]
CMD ["serve"]
