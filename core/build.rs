//! Compiles the wire protocol (`proto/halyard.proto`) into Rust with tonic and prost.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/halyard.proto");
    tonic_prost_build::configure()
        // Collective chunks are decoded without a copy.
        .bytes(".halyard.v1.CollectiveChunk.data")
        // The experiment report is also JSON (the CLI's --json, GET /v1/experiments/NAME).
        .type_attribute(
            ".halyard.v1.ExperimentResponse",
            "#[derive(serde::Serialize)]",
        )
        .type_attribute(".halyard.v1.VariantStats", "#[derive(serde::Serialize)]")
        .type_attribute(".halyard.v1.MetricStats", "#[derive(serde::Serialize)]")
        .compile_protos(&["proto/halyard.proto"], &["proto"])?;
    Ok(())
}
