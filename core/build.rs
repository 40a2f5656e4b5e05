//! Compiles the wire protocol (`proto/halyard.proto`) into Rust with tonic and prost.
//!
//! The one prerequisite of the build beyond Rust is `protoc` with the protobuf well-known
//! types; when either is missing the build stops here with the package to install.

use std::process::{Command, ExitCode};

/// What to install, for the message of a failed build.
const INSTALL: &str = "install the protobuf compiler and its well-known types \
(Debian/Ubuntu: `sudo apt-get install protobuf-compiler libprotobuf-dev`; \
Fedora: `sudo dnf install protobuf-compiler protobuf-devel`; macOS: `brew install protobuf`), \
or point PROTOC at a protoc binary";

fn main() -> ExitCode {
    println!("cargo:rerun-if-changed=proto/halyard.proto");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = std::env::var_os("PROTOC").unwrap_or_else(|| "protoc".into());
    if Command::new(&protoc).arg("--version").output().is_err() {
        eprintln!(
            "error: cannot run `{}` to compile proto/halyard.proto: {INSTALL}",
            protoc.to_string_lossy()
        );
        return ExitCode::FAILURE;
    }
    match compile() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A protoc without the well-known types fails on `google/protobuf/struct.proto`.
            eprintln!(
                "error: compiling proto/halyard.proto failed: {e}\nif a google/protobuf file is not found: {INSTALL}"
            );
            ExitCode::FAILURE
        }
    }
}

fn compile() -> std::io::Result<()> {
    tonic_prost_build::configure()
        // The experiment report is also JSON (the CLI's --json, GET /v1/experiments/NAME).
        .type_attribute(
            ".halyard.v1.ExperimentResponse",
            "#[derive(serde::Serialize)]",
        )
        .type_attribute(".halyard.v1.VariantStats", "#[derive(serde::Serialize)]")
        .type_attribute(".halyard.v1.MetricStats", "#[derive(serde::Serialize)]")
        .compile_protos(&["proto/halyard.proto"], &["proto"])
}
