//! Generates the KServe v2 gRPC messages, the service trait (for the server) and a
//! transport-neutral client (for the load generator, benchmarks and tests) from `proto/*.proto`
//! with a pure-Rust protobuf compiler (protox), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["grpc_service.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
