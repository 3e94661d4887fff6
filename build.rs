//! Generates the gRPC gateway from `protocol/milena.proto` with a pure-Rust
//! protobuf compiler (protox), so building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protocol/milena.proto");
    let fds = protox::compile(["milena.proto"], ["protocol"])?;
    // Our codec: prost's, with undecodable requests as INVALID_ARGUMENT.
    tonic_prost_build::configure()
        .codec_path("crate::grpc::Codec")
        .compile_fds(fds)?;
    Ok(())
}
