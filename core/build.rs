//! Compiles the wire protocol (`proto/halyard.proto`) into Rust with tonic and prost.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/halyard.proto");
    tonic_prost_build::configure()
        // Collective chunks are decoded without a copy.
        .bytes(".halyard.v1.CollectiveChunk.data")
        .compile_protos(&["proto/halyard.proto"], &["proto"])?;
    Ok(())
}
