# adc-operator container image: build with cargo in the official Rust image, run the static
# binary on distroless as a non-root user. (No container engine runs where this project is
# developed; this file is kept simple and is not built in CI.)
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY batch ./batch
COPY emulator ./emulator
COPY testenv ./testenv
COPY benches ./benches
RUN cargo build --release --locked --bin adc-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/adc-operator /adc-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/adc-operator"]
CMD ["run", "--log-format", "json", "--leader-election"]
