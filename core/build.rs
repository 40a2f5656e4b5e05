fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/halyard.proto");
    tonic_prost_build::configure().compile_protos(&["proto/halyard.proto"], &["proto"])?;
    Ok(())
}
