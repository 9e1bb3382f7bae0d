# syntax=docker/dockerfile:1
# Confab server image: build with the Rust toolchain, run on a slim Debian.
# The build stage is pinned to bookworm so that the binary's glibc matches
# the runtime image.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds (BuildKit); the
# binary is copied out of the cached target/ in the same step.
#
# The release profile keeps debug info (debug = 1 in Cargo.toml) for
# profiling, which is most of the binary's size. The image's copy is
# stripped of it here, and only here: target/release/confab keeps it.
# --strip-debug keeps the symbol table, so a panic's backtrace
# (RUST_BACKTRACE=1) still names functions. Measured on a release build:
# 70.9 MB before, 12.9 MB after (a full strip would give 11.3 MB).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin confab \
    && install -m 0755 target/release/confab /usr/local/bin/confab \
    && strip --strip-debug /usr/local/bin/confab

# Nothing is installed on top of the base: the binary needs glibc and
# libgcc_s only (no TLS library; SQLite is compiled in), and the health
# check is the binary itself.
FROM debian:bookworm-20260803-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/confab --create-home confab
COPY --from=build /usr/local/bin/confab /usr/local/bin/confab
USER confab
WORKDIR /var/lib/confab
# Without DATABASE_URL and REDIS_URL the node runs alone on SQLite; mount a
# volume on /var/lib/confab to keep its data. HOST=0.0.0.0: a container's
# loopback is its own, so the node listens on every interface. Without
# AUTH_SECRET or AUTH_PUBLIC_KEY it runs in open mode and warns at start-up
# that anyone reaching the port can speak as any user (docs/security.md).
ENV HOST=0.0.0.0 \
    PORT=8080 \
    SQLITE_PATH=/var/lib/confab/confab.db \
    RUST_LOG=info
EXPOSE 8080
# SIGTERM: the node stops accepting, commits what is queued, closes sockets
# with 1001 and exits.
STOPSIGNAL SIGTERM
# `confab healthcheck` asks GET /health on HOST and PORT (127.0.0.1 for a
# wildcard HOST) and exits 0 on 200, 1 otherwise, within 3 s. Set PORT in
# the container's environment, not with --port, so that it finds the node.
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=5 \
    CMD ["confab", "healthcheck"]
CMD ["confab"]
