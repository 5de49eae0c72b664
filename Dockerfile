# The operator image. Build from the repository root:
#   docker build -t ghcr.io/recstack/recstack-operator:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p recstack-operator

#checkov:skip=CKV_DOCKER_2: Kubernetes probes (/healthz, /readyz) check these containers; a HEALTHCHECK is never run there
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/recstack-operator /usr/local/bin/recstack-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/recstack-operator"]
