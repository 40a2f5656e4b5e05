//! Every spec in `examples/` is a valid job spec: what the README and the docs point users
//! at parses and passes the rules `halyard submit` checks (its data paths are not read).

use std::path::Path;

use halyard_core::spec::JobSpec;

#[test]
fn every_example_spec_parses_and_passes_the_rules() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = Vec::new();
    let mut broken = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Err(e) = JobSpec::from_toml(&text, &name) {
            broken.push(format!("{name}: {e}"));
        }
        checked.push(name);
    }
    assert!(
        checked.len() >= 10,
        "expected the examples folder at {}, found {checked:?}",
        dir.display()
    );
    assert!(broken.is_empty(), "broken examples:\n{}", broken.join("\n"));
}
