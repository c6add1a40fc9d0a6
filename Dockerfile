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
# shell, no package manager), running as uid/gid 65532.

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
ENTRYPOINT ["/usr/local/bin/keyward"]
CMD ["serve"]
