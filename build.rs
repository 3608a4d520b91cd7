//! Compiles `proto/pubsub.proto` with protox (pure Rust, so no `protoc` is needed) and
//! writes the descriptor set that server reflection serves; compiles `proto/record.proto`
//! (the command log of a flight recording) and `proto/cluster.proto` (a cluster node's Raft
//! log) apart, so reflection does not show them.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["pubsub.proto"], ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let bytes = prost::Message::encode_to_vec(&fds);
    std::fs::write(out_dir.join("pubsub_descriptor.bin"), bytes)?;
    tonic_prost_build::configure()
        // Ordered maps on the wire types too: attributes come out in the same order every run.
        .btree_map(".")
        // Payloads stay `Bytes` from the socket to the log and back: no copies.
        .bytes(".")
        // prost's encoding, and its decoding read from `Bytes` (see src/wire/codec.rs).
        .codec_path("crate::wire::WireCodec")
        .compile_fds(fds)?;
    let record = protox::compile(["record.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .btree_map(".")
        .bytes(".")
        .build_client(false)
        .build_server(false)
        .compile_fds(record)?;
    let cluster = protox::compile(["cluster.proto"], ["proto"])?;
    tonic_prost_build::configure().btree_map(".").bytes(".").compile_fds(cluster)?;
    Ok(())
}
