# Builds logagent and logtransfer into one image; docker-compose.yml picks the
# binary with `command`. The build stage installs the `build` group of the one
# package list (scripts/setup.d/debian-packages), so it cannot drift from
# scripts/setup.
FROM rust:1-bookworm AS build
COPY scripts/setup /tmp/setup/setup
COPY scripts/setup.d /tmp/setup/setup.d
RUN apt-get update \
    && apt-get install -y --no-install-recommends $(/tmp/setup/setup --list build) \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p agent -p transfer

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates libcurl4 libssl3 libsasl2-2 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/logagent /src/target/release/logtransfer /usr/local/bin/
COPY config/agent.toml /etc/logagent/agent.toml
COPY config/transfer.toml /etc/logtransfer/transfer.toml
