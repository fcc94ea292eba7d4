# adc-operator container image: build with cargo in the official Rust image, run the binary
# (linked against glibc) on distroless cc as a non-root user.
#
#   docker build -t REGISTRY/adc-operator:TAG .
#
# The build stage copies every workspace member (Cargo.toml's [workspace] members) and every
# target file a member's Cargo.toml declares, or cargo refuses the workspace. CI proves it
# without a container engine: `make image-check` (part of `make lint`, hack/image-check.sh)
# stages exactly what the build stage's COPY lines copy and runs its RUN line, and
# `make image-demo` (hack/image-assemble.sh) assembles the final stage from that binary and runs
# the demo with the operator inside the image.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY batch ./batch
COPY bench ./bench
COPY emulator ./emulator
COPY testenv ./testenv
RUN cargo build --release --locked --bin adc-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/adc-operator /adc-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/adc-operator"]
CMD ["run", "--log-format", "json", "--leader-election"]
