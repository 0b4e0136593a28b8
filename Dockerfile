# One image with logagent, logtransfer, logconsole and logctl; the command
# picks the binary (docker-compose.yml, deploy/kubernetes). It runs as the
# non-root user logpipe (uid 10001). The build stage installs the `build`
# group of the one package list (scripts/setup.d/debian-packages), so it
# cannot drift from scripts/setup. Not built on the development machines
# (no Docker engine there); scripts/package makes the .deb packages instead.
FROM rust:1-bookworm AS build
COPY scripts/setup /tmp/setup/setup
COPY scripts/setup.d /tmp/setup/setup.d
RUN apt-get update \
    && apt-get install -y --no-install-recommends $(/tmp/setup/setup --list build) \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p agent -p transfer -p console -p control

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      ca-certificates libssl3 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 logpipe \
    && useradd --system --uid 10001 --gid logpipe --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin logpipe \
    && install -d -o logpipe -g logpipe -m 0750 /var/lib/logagent /var/lib/logtransfer
COPY --from=build /src/target/release/logagent /src/target/release/logtransfer \
     /src/target/release/logconsole /src/target/release/logctl /usr/bin/
COPY config/agent.toml config/transfer.toml config/console.toml /etc/logpipe/
USER 10001:10001
