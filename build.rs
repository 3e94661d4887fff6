//! Generates the gRPC gateway from `protocol/milena.proto`, and the etcd
//! client from the subset of etcd's API in `src/etcd/etcd.proto`, with a
//! pure-Rust protobuf compiler (protox): building needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protocol/milena.proto");
    println!("cargo:rerun-if-changed=src/etcd/etcd.proto");
    let fds = protox::compile(["milena.proto"], ["protocol"])?;
    // Our codec: prost's, with undecodable requests as INVALID_ARGUMENT.
    tonic_prost_build::configure()
        .codec_path("crate::grpc::Codec")
        .compile_fds(fds)?;
    let etcd = protox::compile(["etcd.proto"], ["src/etcd"])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(etcd)?;
    Ok(())
}
