# keyward container image: a static-ish release binary on distroless.
#
# Build (from the repository root):
#   docker build -t keyward .
# Run, with your config mounted at the default path (its listen addresses
# must be 0.0.0.0:8080 for the proxy and 0.0.0.0:9090 for admin to be
# reachable from outside the container):
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/config/keyward.yaml:/etc/keyward/keyward.yaml:ro" \
#     -e KEYWARD_REDIS_URL=redis://redis:6379/0 \
#     keyward
# Other commands use the same image: `docker run --rm -v ...:/etc/keyward/keyward.yaml:ro keyward check-config`.
#
# Final stage: gcr.io/distroless/cc-debian12:nonroot (glibc + libgcc, no
# shell, no package manager), running as uid/gid 65532. keyward needs no
# writable path: run it with a read-only root filesystem and every capability
# dropped (deploy/kubernetes, deploy/compose do).
#
# Health: there is no HEALTHCHECK, because the image has no shell and no
# curl to run one with. Probe the admin listener from outside instead:
# Kubernetes livenessProbe GET /healthz and readinessProbe GET /readyz on
# port 9090 (deploy/kubernetes/deployment.yaml); with compose or plain
# docker, `curl -f http://127.0.0.1:9090/readyz` from the host, or alert on
# Prometheus's `up` (deploy/prometheus).
#
# Size: not measured here (no docker daemon where this was written). An
# estimate: the release binary is ~7.7 MB (~6.4 MB stripped) on a base of
# ~20-25 MB, so about 30 MB uncompressed. `docker image ls keyward` tells.

# ---- build -------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependency layer: build every dependency against a dummy crate, so that a
# change under src/ rebuilds only keyward itself. The image needs only the
# library and the binary, so [[bench]]/[[test]]/[[example]] tables are cut
# from the manifest (cargo refuses a manifest naming target files that are
# not there; tests/ and benches/ are not in the build context).
COPY Cargo.toml Cargo.lock ./
RUN awk '/^\[/ { skip = ($0 ~ /^\[\[(bench|test|example)\]\]/) } !skip' Cargo.toml > Cargo.toml.image \
 && mv Cargo.toml.image Cargo.toml \
 && mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && echo '' > src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src target/release/keyward target/release/deps/keyward-* \
      target/release/deps/libkeyward-* target/release/.fingerprint/keyward-*

# The real sources. The fingerprints removed above force a rebuild even
# though COPY keeps the files' (older) modification times.
COPY src ./src
RUN cargo build --release --locked \
 && install -D -m 0755 target/release/keyward /out/keyward

# ---- run ---------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/keyward /usr/local/bin/keyward
ENV KEYWARD_CONFIG=/etc/keyward/keyward.yaml
# 8080: the proxy listener; 9090: admin (/metrics, /healthz, /readyz).
EXPOSE 8080 9090
USER 65532:65532
# SIGTERM (docker stop, Kubernetes) starts keyward's graceful drain.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/keyward"]
CMD ["serve"]
