//! Compiles `proto/` with protox (a pure-Rust protobuf compiler) so that `cargo build` works
//! on a machine without `protoc`.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/netsy.proto",
        "proto/peer.proto",
        "proto/etcd/kv.proto",
        "proto/etcd/auth.proto",
        "proto/etcd/rpc.proto",
        "proto/etcd/v3lock.proto",
        "proto/etcd/v3election.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Keys and values are `Bytes` so a value read from memory is shared, not copied.
        .bytes(".")
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
