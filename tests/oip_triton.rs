//! Triton's own client (`tritonclient[http]`, Python) against a node's Open Inference
//! Protocol routes: the server is live, the model ready, its metadata lists the features,
//! and one infer call with a tensor per feature gives exactly `:predict`'s scores, also
//! pinned to the deployed version (`model_version`: the versioned routes). Skipped
//! with one line where the Python (`HALYARD_PYTHON`, else `python3`) cannot import
//! `tritonclient.http`; `.ci/run` installs it in a virtual environment.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use halyard_core::spec::JobSpec;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_gets_the_scores_of_predict() {
    let Some(python) = python_with(
        "tritonclient.http, numpy",
        "pip install 'tritonclient[http]'",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = halyard_cli::datagen::generate(dir, 2000, 3).unwrap();
    let spec_path = dir.join("resp.toml");
    std::fs::write(
        &spec_path,
        format!(
            "name = \"resp\"\n[data]\nsource = \"{}\"\nlabel = \"responded\"\nexclude = [\"customer_id\"]\n[train]\nepochs = 2\n",
            data.responses.display()
        ),
    )
    .unwrap();
    let spec = JobSpec::from_file(&spec_path).unwrap();
    let (cluster, client) = standalone(dir, 1).await;
    let job = client.submit(&spec).await.unwrap();
    assert_eq!(
        wait_done(&client, &job.id, Duration::from_secs(120))
            .await
            .state,
        "succeeded"
    );
    deploy(&client, "resp", 1, "production", None).await;
    let addr = cluster.scheduler.addr.to_string();
    let http = http_client(&cluster.admin_key);
    wait_for(
        "the model to be served",
        Duration::from_secs(30),
        || async {
            let r = http
                .get(format!("http://{addr}/v1/models/resp"))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
        },
    )
    .await;

    let bytes = bytes::Bytes::from(std::fs::read(&data.responses).unwrap());
    let table = halyard_core::data::read_table(&bytes, &spec.data, "responses.csv").unwrap();
    let rows = halyard_cli::load::records(&table.batches, &["responded"]).unwrap();
    let rows = &rows[..50];
    let answer = http
        .post(format!("http://{addr}/v1/models/resp:predict"))
        .header("content-type", "application/json")
        .body(json!({ "records": rows }).to_string())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let predicted: Value = serde_json::from_slice(&answer).unwrap();
    let want: Vec<f64> = predicted["predictions"]
        .as_array()
        .unwrap_or_else(|| panic!("{predicted}"))
        .iter()
        .map(|p| p["score"].as_f64().unwrap())
        .collect();

    let records = dir.join("records.json");
    std::fs::write(&records, serde_json::to_vec(rows).unwrap()).unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/triton_infer.py"
    );
    let out = Command::new(&python)
        .args([script, &addr, &cluster.admin_key, "resp"])
        .arg(&records)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tritonclient failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["live"], true, "{got}");
    assert_eq!(got["ready"], true, "{got}");
    assert!(
        got["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i == "channel"),
        "{got}"
    );
    let scores: Vec<f64> = got["scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect();
    assert_eq!(scores, want, "tritonclient's scores are :predict's");
    assert_eq!(got["versions"], serde_json::json!(["1"]), "{got}");
    assert_eq!(got["version_ready"], true, "{got}");
    assert_eq!(
        got["pinned_scores"], got["scores"],
        "pinned to version 1, the same scores"
    );
}
