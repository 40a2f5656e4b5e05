//! The prediction endpoint end to end: scores over HTTP and gRPC equal the models crate's
//! scoring of the same records; bad requests get a 4xx that says what to fix and the
//! server stays up; a canary, a promote and a rollback under steady load fail no request
//! and every answer names its version; outcomes feed the A/B analysis; and (real
//! processes, real etcd) killing one of two serving executors under load fails no request,
//! and a new executor picks the model up.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use halyard_cli::load::{LoadConfig, LoadReport, predict_bodies, records};
use halyard_cli::registry::DeployAction;
use halyard_client::Client;
use halyard_core::proto::deploy_request::Change;
use halyard_core::proto::{DeployRequest, PredictRequest, Promote, Rollback};
use halyard_core::spec::JobSpec;
use halyard_models::runtime::LoadedModel;
use serde_json::{Value, json};

fn mlp_spec(dir: &Path, name: &str, data: &Path, seed: u64) -> JobSpec {
    let path = dir.join(format!("{name}-{seed}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\n[data]\nsource = \"{}\"\nlabel = \"responded\"\nexclude = [\"customer_id\"]\n\
             crosses = [[\"region\", \"channel\"]]\n\
             [model]\ntype = \"mlp\"\nhidden = [16]\nensemble = 2\nnumeric_buckets = 6\n\
             [train]\nepochs = 2\nbatch_size = 256\nlearning_rate = 0.01\nseed = {seed}\n",
            data.display()
        ),
    )
    .unwrap();
    JobSpec::from_file(&path).unwrap()
}

async fn train(client: &Client, spec: &JobSpec) {
    let job = client.submit(spec).await.unwrap();
    let done = wait_done(client, &job.id, Duration::from_secs(180)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
}

/// POST a JSON body; the status and the parsed answer.
async fn post(
    http: &reqwest::Client,
    addr: &str,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let resp = http
        .post(format!("http://{addr}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("not JSON ({status}): {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

/// Wait until `addr` serves `name` with exactly these versions.
async fn wait_serving(http: &reqwest::Client, addr: &str, name: &str, versions: &[u64]) {
    wait_for(
        &format!("{addr} to serve {name} {versions:?}"),
        Duration::from_secs(30),
        || async {
            let resp = http
                .get(format!("http://{addr}/v1/models/{name}"))
                .send()
                .await
                .ok()?;
            let v: Value = resp.json_or_null().await;
            let mut got: Vec<u64> = v["variants"]
                .as_array()?
                .iter()
                .filter_map(|x| x["version"].as_u64())
                .collect();
            got.sort_unstable();
            (got == versions).then_some(())
        },
    )
    .await;
}

trait JsonOrNull {
    async fn json_or_null(self) -> Value;
}

impl JsonOrNull for reqwest::Response {
    async fn json_or_null(self) -> Value {
        self.bytes()
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Value::Null)
    }
}

fn scores(v: &Value) -> Vec<f64> {
    v["predictions"]
        .as_array()
        .unwrap_or_else(|| panic!("no predictions in {v}"))
        .iter()
        .map(|p| p["score"].as_f64().unwrap())
        .collect()
}

async fn two_executor_standalone(dir: &Path) -> halyard::Standalone {
    halyard::start_standalone(halyard_core::config::Settings {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.join("state")),
        data_roots: Some(vec![dir.display().to_string()]),
        executors: Some(2),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn read_table(spec: &JobSpec, data: &Path) -> halyard_core::data::Table {
    let bytes = bytes::Bytes::from(std::fs::read(data).unwrap());
    halyard_core::data::read_table(&bytes, &spec.data, "responses.csv").unwrap()
}

fn struct_of(record: &serde_json::Map<String, Value>) -> prost_types::Struct {
    use prost_types::value::Kind;
    let fields = record
        .iter()
        .map(|(k, v)| {
            let kind = match v {
                Value::Null => Kind::NullValue(0),
                Value::Bool(b) => Kind::BoolValue(*b),
                Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap()),
                Value::String(s) => Kind::StringValue(s.clone()),
                _ => unreachable!("records are flat"),
            };
            (k.clone(), prost_types::Value { kind: Some(kind) })
        })
        .collect();
    prost_types::Struct { fields }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_scores_equal_the_models_crate_and_bad_requests_get_4xx() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = halyard_cli::datagen::generate(dir, 3000, 5).unwrap();
    let cluster = two_executor_standalone(dir).await;
    let gw = cluster.scheduler.addr.to_string();
    let exec = cluster.executors[0].addr.to_string();
    let client = client_of(&cluster).await;
    let http = http_client(&cluster.admin_key);
    let spec = mlp_spec(dir, "resp", &data.responses, 1);
    train(&client, &spec).await;
    deploy(&client, "resp", 1, "production", None).await;
    wait_serving(&http, &gw, "resp", &[1]).await;

    // The models crate's scores of the same rows, from the same artifact, scoring as the
    // executors do by default (a request of a few rows on plain arrays).
    let vdir = dir.join("state/store/models/resp/1");
    let model = LoadedModel::from_bytes(
        &std::fs::read(vdir.join("model.safetensors")).unwrap(),
        &std::fs::read(vdir.join("manifest.json")).unwrap(),
    )
    .unwrap()
    .with_plain_rows(halyard_core::config::DEFAULT_PLAIN_ROWS);
    let table = read_table(&spec, &data.responses);
    // Scores of rows `0..n` as one matrix (summation order follows the matrix shape, so
    // each request is compared with the same rows scored together).
    let first = &table.batches[0];
    assert!(
        first.num_rows() >= 300,
        "the first batch holds the compared rows"
    );
    let expected_of = |n: usize| model.score(&[first.slice(0, n)]).unwrap();
    let expected = expected_of(300);
    // Raw records as a service would send them: every column but the label (the id is
    // an extra field, ignored).
    let rows = records(&table.batches, &["responded"]).unwrap();
    let n = 300;

    // A batch through the scheduler's gateway (forwarded) and one record at a time to an
    // executor (served locally): equal to the last bit after the JSON round trip.
    let (status, v) = post(
        &http,
        &gw,
        "/v1/models/resp:predict",
        json!({"records": &rows[..n]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let got = scores(&v);
    for i in 0..n {
        assert_eq!(got[i], f64::from(expected[i]), "row {i}");
        assert_eq!(v["predictions"][i]["version"], 1);
    }

    // The Open Inference Protocol: one tensor per column, the same rows, the same scores.
    let inputs: Vec<Value> = rows[0]
        .keys()
        .map(|name| {
            let data: Vec<Value> = rows[..n]
                .iter()
                .map(|r| r.get(name).cloned().unwrap_or(Value::Null))
                .collect();
            let datatype = if data.iter().any(Value::is_string) {
                "BYTES"
            } else {
                "FP64"
            };
            json!({"name": name, "shape": [n], "datatype": datatype, "data": data})
        })
        .collect();
    let (status, v) = post(
        &http,
        &gw,
        "/v2/models/resp/infer",
        json!({"id": "req-1", "inputs": inputs}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        (
            v["model_name"].clone(),
            v["model_version"].clone(),
            v["id"].clone()
        ),
        (json!("resp"), json!("1"), json!("req-1"))
    );
    assert_eq!(v["outputs"][0]["name"], "score");
    let oip: Vec<f64> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap())
        .collect();
    assert_eq!(oip, got, "the protocol's scores are :predict's");
    // Pinned to the deployed version: the same scores; another version is a 404 naming
    // the deployed ones, a version that is no number a 400.
    let (status, v) = post(
        &http,
        &gw,
        "/v2/models/resp/versions/1/infer",
        json!({"inputs": inputs}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        v["outputs"][0]["data"],
        json!(got),
        "pinned: :predict's scores"
    );
    let get = |path: &str| {
        let http = http.clone();
        let url = format!("http://{gw}{path}");
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json_or_null().await)
        }
    };
    let (status, v) = get("/v2/models/resp/versions/1").await;
    assert_eq!((status, v["versions"].clone()), (200, json!(["1"])), "{v}");
    let (status, v) = get("/v2/models/resp/versions/1/ready").await;
    assert_eq!((status, v["ready"].clone()), (200, json!(true)), "{v}");
    let (status, v) = get("/v2/models/resp/versions/9/ready").await;
    assert_eq!(status, 404, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("version 9 of model resp is not deployed; deployed: 1"),
        "{v}"
    );
    let (status, v) = post(
        &http,
        &gw,
        "/v2/models/resp/versions/latest/infer",
        json!({"inputs": inputs}).to_string(),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = post(
        &http,
        &gw,
        "/v2/models/resp/infer",
        json!({"inputs": [
            {"name": "age", "shape": [2], "datatype": "FP64", "data": [40, 50]},
            {"name": "channel", "shape": [1], "datatype": "BYTES", "data": ["email"]}
        ]})
        .to_string(),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("input \"channel\""),
        "{v}"
    );
    let meta = http
        .get(format!("http://{gw}/v2/models/resp"))
        .send()
        .await
        .unwrap()
        .json_or_null()
        .await;
    assert!(
        meta["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["name"] == "channel" && i["datatype"] == "BYTES"),
        "{meta}"
    );
    assert_eq!(meta["versions"], json!(["1"]), "the deployed versions");
    // A lone row goes through the plain arrays: the models crate scores it alone too (a
    // matrix product's summation order depends on its shape, by an ulp or so).
    let alone = |i: usize| f64::from(model.score(&[first.slice(i, 1)]).unwrap()[0]);
    for (i, row) in rows.iter().enumerate().take(20) {
        let (status, v) = post(
            &http,
            &exec,
            "/v1/models/resp:predict",
            json!({"record": row}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(scores(&v), vec![alone(i)], "row {i}");
    }
    // The same through gRPC, on the same port as the job API.
    let reply = client
        .predict(PredictRequest {
            model: "resp".into(),
            records: rows[..50].iter().map(struct_of).collect(),
            ..Default::default()
        })
        .await
        .unwrap();
    let expected = expected_of(50);
    for (i, p) in reply.predictions.iter().enumerate() {
        assert_eq!(p.score, f64::from(expected[i]), "gRPC row {i}");
        assert_eq!(p.version, 1);
    }

    // Bad requests: a 4xx that names the problem, through the gateway and locally.
    let good = rows[0].clone();
    let mut missing = good.clone();
    missing.remove("income");
    let mut wrong = good.clone();
    wrong.insert("age".into(), json!("forty"));
    let big = format!(
        "{{\"records\": [{}]}}",
        vec![json!(good).to_string(); 20_000].join(",")
    );
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "missing feature",
            json!({"record": missing}).to_string(),
            400,
            "\"income\": missing",
        ),
        (
            "wrong type",
            json!({"record": wrong}).to_string(),
            400,
            "\"age\": expected a number",
        ),
        (
            "malformed JSON",
            "{\"record\": {".into(),
            400,
            "not valid JSON",
        ),
        (
            "misspelt field",
            json!({"recods": [good]}).to_string(),
            400,
            "unknown field",
        ),
        (
            "no records",
            json!({"records": []}).to_string(),
            400,
            "no records",
        ),
        (
            "unknown version",
            json!({"record": good, "version": 9}).to_string(),
            404,
            "version 9",
        ),
        (
            "unknown alias",
            json!({"record": good, "alias": "beta"}).to_string(),
            404,
            "no alias",
        ),
        ("oversized body", big, 413, "larger than"),
    ];
    for addr in [&gw, &exec] {
        for (what, body, status, says) in &cases {
            // A 413 is answered before the body is read and the server closes that
            // connection: the oversized request gets a connection of its own, so the next
            // request does not race the close on a pooled one.
            let fresh;
            let client = if *status == 413 {
                fresh = http_builder(&cluster.admin_key)
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap();
                &fresh
            } else {
                &http
            };
            let (got, v) = post(client, addr, "/v1/models/resp:predict", body.clone()).await;
            assert_eq!(got, *status, "{what} at {addr}: {v}");
            let msg = v["error"].as_str().unwrap_or_default();
            assert!(msg.contains(says), "{what} at {addr}: {msg}");
        }
        let (got, v) = post(
            &http,
            addr,
            "/v1/models/nope:predict",
            json!({"record": good}).to_string(),
        )
        .await;
        assert_eq!(got, 404, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("no model nope"),
            "{v}"
        );
        let (got, v) = post(&http, addr, "/v1/models/resp:explain", "{}").await;
        assert_eq!(got, 404, "{v}");
        let (got, v) = post(
            &http,
            addr,
            "/v1/models/resp:forecast",
            json!({"series": [{"id": "a", "values": [1.0]}], "horizon": 2}).to_string(),
        )
        .await;
        assert_eq!(got, 400, "{v}");
        assert!(
            v["error"].as_str().unwrap().contains("response model"),
            "{v}"
        );
    }
    // An unknown category is served by the documented rule: the `other` slot, as null.
    let mut unseen = good.clone();
    unseen.insert("region".into(), json!("atlantis"));
    let mut absent = good.clone();
    absent.insert("region".into(), Value::Null);
    let (s1, a) = post(
        &http,
        &gw,
        "/v1/models/resp:predict",
        json!({"record": unseen}).to_string(),
    )
    .await;
    let (s2, b) = post(
        &http,
        &gw,
        "/v1/models/resp:predict",
        json!({"record": absent}).to_string(),
    )
    .await;
    assert_eq!((s1, s2), (200, 200), "{a} {b}");
    assert_eq!(scores(&a), scores(&b));
    // The server is still up and right.
    let (status, v) = post(
        &http,
        &gw,
        "/v1/models/resp:predict",
        json!({"record": good}).to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(scores(&v), vec![alone(0)]);
    // The schema names every input.
    let schema: Value = http
        .get(format!("http://{gw}/v1/models/resp"))
        .send()
        .await
        .unwrap()
        .json_or_null()
        .await;
    let inputs: Vec<&str> = schema["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert!(
        inputs.contains(&"region") && inputs.contains(&"age") && !inputs.contains(&"responded"),
        "{schema}"
    );

    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_promote_and_rollback_under_load_fail_no_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = halyard_cli::datagen::generate(dir, 2000, 6).unwrap();
    let cluster = two_executor_standalone(dir).await;
    let gw = cluster.scheduler.addr.to_string();
    let client = client_of(&cluster).await;
    let http = http_client(&cluster.admin_key);
    for seed in [1, 2] {
        train(&client, &mlp_spec(dir, "ab", &data.responses, seed)).await;
    }
    deploy(&client, "ab", 1, "production", None).await;
    wait_serving(&http, &gw, "ab", &[1]).await;

    let spec = mlp_spec(dir, "ab", &data.responses, 1);
    let table = read_table(&spec, &data.responses);
    let rows = records(&table.batches, &["responded"]).unwrap();
    let load = tokio::spawn(halyard_cli::load::run(
        LoadConfig {
            addr: gw.clone(),
            model: "ab".into(),
            call: "predict",
            connections: 4,
            duration: Duration::from_secs(7),
            rate: Some(200.0),
            check: true,
            key: Some(cluster.admin_key.clone()),
            tls: None,
        },
        predict_bodies(&rows, 2, 500),
    ));
    let change = |c: Change| DeployRequest {
        name: "ab".into(),
        change: Some(c),
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    deploy(&client, "ab", 2, "canary", Some(50)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .deploy(change(Change::Promote(Promote {
            alias: "canary".into(),
        })))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .deploy(change(Change::Rollback(Rollback {})))
        .await
        .unwrap();
    let report: LoadReport = load.await.unwrap().unwrap();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert_eq!(report.unnamed, 0, "answers without a version");
    assert!(report.ok > 500, "{} requests answered", report.ok);
    assert!(
        report.versions.get(&1).is_some_and(|n| *n > 0)
            && report.versions.get(&2).is_some_and(|n| *n > 0),
        "both versions served: {:?}",
        report.versions
    );

    // Rolled back to the canary split: one key always gets the same variant.
    wait_serving(&http, &gw, "ab", &[1, 2]).await;
    let body = json!({"record": rows[0], "key": "customer-42"}).to_string();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..20 {
        let (status, v) = post(&http, &gw, "/v1/models/ab:predict", body.clone()).await;
        assert_eq!(status, 200, "{v}");
        seen.insert(v["predictions"][0]["version"].as_u64().unwrap());
    }
    assert_eq!(seen.len(), 1, "one key, one variant: {seen:?}");

    // Outcomes per variant feed the experiment report.
    let feed = |range: std::ops::Range<usize>| {
        let (http, gw) = (http.clone(), gw.clone());
        async move {
            for i in range {
                let (version, converted) = if i % 2 == 0 {
                    (1, i % 8 == 0)
                } else {
                    (2, i % 4 == 1)
                };
                let (status, v) = post(
                    &http,
                    &gw,
                    "/v1/models/ab:feedback",
                    json!({"version": version, "converted": converted}).to_string(),
                )
                .await;
                assert_eq!(status, 200, "{v}");
            }
        }
    };
    feed(0..40).await;
    // 20 outcomes each: too few for a comparison, and the report says how many more.
    let e = client.experiment("ab").await.unwrap();
    let v2 = *e.variants.iter().find(|s| s.version == 2).unwrap();
    assert!(v2.p_value.is_nan() && v2.needed == 10, "{v2:?}");
    feed(40..160).await;
    let (status, v) = post(
        &http,
        &gw,
        "/v1/models/ab:feedback",
        json!({"version": 7, "converted": true}).to_string(),
    )
    .await;
    assert_eq!(status, 404, "{v}");
    let e = client.experiment("ab").await.unwrap();
    assert_eq!(e.control, 1);
    let by = |v: u64| *e.variants.iter().find(|s| s.version == v).unwrap();
    assert_eq!((by(1).trials, by(1).conversions), (80, 20));
    assert_eq!((by(2).trials, by(2).conversions), (80, 40));
    assert!((by(2).difference - 0.25).abs() < 1e-12);
    assert!(by(2).p_value > 0.0 && by(2).p_value < 1.0 && by(2).ci_low < by(2).ci_high);
    assert!(by(2).seq_low < by(2).ci_low && by(2).seq_p_value >= by(2).p_value);
    assert_eq!(by(2).needed, 0);
    // The same report over HTTP, as JSON.
    let got = http
        .get(format!("http://{gw}/v1/experiments/ab"))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    let j: serde_json::Value = serde_json::from_slice(&got.bytes().await.unwrap()).unwrap();
    assert_eq!(j["control"], 1);
    assert_eq!(j["variants"][1]["needed"], 0);
    assert!((j["variants"][1]["p_value"].as_f64().unwrap() - by(2).p_value).abs() < 1e-12);
    // The keyed predictions above (the load's requests and the 20 of customer-42) were
    // exposures, logged by the executor that scored them and published to the
    // coordinator within a second: the SRM check counts them.
    let exposed = report.ok + 20;
    let e = wait_for("the exposures", Duration::from_secs(10), || async {
        let e = client.experiment("ab").await.ok()?;
        (e.variants.iter().map(|v| v.exposures).sum::<u64>() == exposed).then_some(e)
    })
    .await;
    assert_eq!(e.srm_counts, "exposures");
    // Other metrics, as a batch: each version's mean against the control's (Welch).
    let revenue: Vec<Value> = (0..80)
        .map(|i| json!({"version": 1 + i % 2, "metric": "revenue", "value": 10.0 + (i % 2) as f64 * 5.0 + (i % 7) as f64}))
        .collect();
    let (status, v) = post(
        &http,
        &gw,
        "/v1/models/ab:feedback",
        Value::from(revenue).to_string(),
    )
    .await;
    assert_eq!((status, v["accepted"].as_u64()), (200, Some(80)), "{v}");
    let e = client.experiment("ab").await.unwrap();
    let r2 = e
        .metrics
        .iter()
        .find(|m| m.metric == "revenue" && m.version == 2)
        .unwrap();
    assert_eq!(r2.n, 40);
    assert!(
        r2.difference > 3.0 && r2.ci_low > 0.0 && r2.p_value < 0.001,
        "{r2:?}"
    );
    assert!(!e.metrics.iter().any(|m| m.metric == "conversion"));
    // Bad outcomes are refused whole, naming what is wrong; nothing of them is counted.
    for (body, says) in [
        (
            json!({"version": 1, "metric": "revenue", "value": "12"}).to_string(),
            "invalid type: string",
        ),
        (
            json!({"version": 1, "metric": "Revenue", "value": 1}).to_string(),
            "metric \"Revenue\"",
        ),
        (
            json!({"version": 1, "metric": "conversion", "value": 2}).to_string(),
            "not 0 or 1",
        ),
        (json!({"version": 1}).to_string(), "`converted`"),
        (
            json!([{"version": 1, "converted": true}, {"version": 9, "converted": true}])
                .to_string(),
            "outcome 1: model ab has no version 9",
        ),
        ("[]".to_string(), "send 1 to 10000"),
    ] {
        let (status, v) = post(&http, &gw, "/v1/models/ab:feedback", body.clone()).await;
        assert!(
            (status == 400 || status == 404)
                && v["error"].as_str().is_some_and(|m| m.contains(says)),
            "{body}: {status} {v}"
        );
    }
    let after = client.experiment("ab").await.unwrap();
    let by = |e: &halyard_core::proto::ExperimentResponse, v: u64| {
        e.variants.iter().find(|s| s.version == v).unwrap().trials
    };
    assert_eq!(
        (by(&after, 1), by(&after, 2)),
        (80, 80),
        "a refused batch counted nothing"
    );
    let missing = http
        .get(format!("http://{gw}/v1/experiments/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The CLI's deploy path refuses a version that does not exist.
    let err = halyard_cli::registry::deploy(
        &client,
        "ab",
        DeployAction::Version {
            version: 5,
            alias: "production".into(),
            percent: None,
        },
        true,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("no such version"), "{err}");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_serving_executor_under_load_fails_no_request() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cl = EtcdCluster::new(dir, "serving-it");
    let data = halyard_cli::datagen::generate(&dir.join("data"), 2000, 7).unwrap();
    let gw = format!("127.0.0.1:{}", free_port());
    let _sched = cl.scheduler("sched", &gw);
    let exec = |i: usize| cl.executor(&format!("exec-{i}"));
    let client = cl.connect(&gw).await;
    let key = cl.admin_key().await;
    let (mut victim, _) = exec(0);
    let _survivor = exec(1);
    wait_for("two executors", Duration::from_secs(20), || async {
        (client.cluster().await.ok()?.executors.len() == 2).then_some(())
    })
    .await;
    train(&client, &spec(dir, "kill", &data.responses, 3, 256)).await;
    deploy(&client, "kill", 1, "production", None).await;
    let http = http_client(&key);
    let serving_on = |n: usize| {
        let http = http.clone();
        let gw = gw.clone();
        async move {
            let v: Value = http
                .get(format!("http://{gw}/v1/models"))
                .send()
                .await
                .ok()?
                .json_or_null()
                .await;
            let execs: Vec<String> = v["models"][0]["executors"]
                .as_array()?
                .iter()
                .map(|e| e.as_str().unwrap_or_default().to_string())
                .collect();
            (execs.len() == n).then_some(execs)
        }
    };
    wait_for("both executors to serve", Duration::from_secs(30), || {
        serving_on(2)
    })
    .await;

    let spec = JobSpec::from_file(&dir.join("kill.toml")).unwrap();
    let table = read_table(&spec, &data.responses);
    let rows = records(&table.batches, &["responded"]).unwrap();
    let load = tokio::spawn(halyard_cli::load::run(
        LoadConfig {
            addr: gw.clone(),
            model: "kill".into(),
            call: "predict",
            connections: 4,
            duration: Duration::from_secs(6),
            rate: Some(200.0),
            check: true,
            key: Some(key.clone()),
            tls: None,
        },
        predict_bodies(&rows, 1, 500),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    victim.kill();
    let report = load.await.unwrap().unwrap();
    assert_eq!(report.failed, 0, "failed requests: {:?}", report.failures);
    assert!(report.ok > 800, "{} requests answered", report.ok);

    // The dead executor's serving record goes with its lease; a new executor loads the
    // model and answers for it itself.
    wait_for(
        "the dead executor to drop out",
        Duration::from_secs(20),
        || serving_on(1),
    )
    .await;
    let (_newcomer, addr) = exec(2);
    let execs = wait_for("the new executor to serve", Duration::from_secs(30), || {
        serving_on(2)
    })
    .await;
    assert!(execs.contains(&"exec-2".to_string()), "{execs:?}");
    let (status, v) = post(
        &http,
        &addr,
        "/v1/models/kill:predict",
        json!({"record": rows[0]}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["executor"], "exec-2");
}

/// Where a model is placed and who serves it, once the two agree with `check`.
async fn placement_settled(
    client: &Client,
    model: &str,
    check: impl Fn(&halyard_core::proto::DeploymentInfo) -> bool,
) -> halyard_core::proto::DeploymentInfo {
    wait_for(
        &format!("{model}'s placement"),
        Duration::from_secs(40),
        || async {
            let d = client.model(model).await.ok()?.deployment?;
            let mut placed = d.placed_on.clone();
            let mut serving: Vec<String> = d
                .served_by
                .iter()
                .filter(|s| !s.versions.is_empty())
                .map(|s| s.executor.clone())
                .collect();
            placed.sort();
            serving.sort();
            (placed == serving && check(&d)).then_some(d)
        },
    )
    .await
}

/// A deployment with `--replicas 2` is loaded by two executors with memory for it, never
/// by one offering none; when one of them is killed the leader places the model on the
/// third and it answers there; with no replica count it goes on every executor it fits on
/// and says how many did not fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_go_where_memory_allows_and_move_when_an_executor_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cl = EtcdCluster::new(dir, "placement");
    let data = halyard_cli::datagen::generate(&dir.join("data"), 1500, 5).unwrap();
    let gw = format!("127.0.0.1:{}", free_port());
    let _sched = cl.scheduler("sched", &gw);
    let mut execs: std::collections::BTreeMap<String, Proc> = (0..3)
        .map(|i| {
            let id = format!("exec-{i}");
            let (p, _) = cl.executor(&id);
            (id, p)
        })
        .collect();
    cl.flags = vec!["--memory-mb".into(), "0".into()];
    let (_small, _) = cl.executor("exec-small");
    let client = cl.connect(&gw).await;
    wait_for("four executors", Duration::from_secs(30), || async {
        (client.cluster().await.ok()?.executors.len() == 4).then_some(())
    })
    .await;
    train(&client, &spec(dir, "placed", &data.responses, 2, 256)).await;
    let set_replicas = |count: u32| {
        client.deploy(DeployRequest {
            name: "placed".into(),
            change: Some(Change::Replicas(halyard_core::proto::SetReplicas { count })),
        })
    };
    set_replicas(2).await.unwrap();
    deploy(&client, "placed", 1, "production", None).await;
    let d = placement_settled(&client, "placed", |d| d.placed_on.len() == 2).await;
    assert_eq!((d.replicas, d.unplaced), (2, 0), "{d:?}");
    assert!(d.memory_bytes > 0, "{d:?}");
    assert!(!d.placed_on.contains(&"exec-small".to_string()), "{d:?}");
    let key = cl.admin_key().await;
    let http = http_client(&key);
    let spec = JobSpec::from_file(&dir.join("placed.toml")).unwrap();
    let body = first_record_body(&spec, &data.responses);
    let predict = || predict_status(&http, &gw, "placed", &body);
    // The gateway reads who serves what every 100 ms.
    wait_for("the gateway to route", Duration::from_secs(10), || async {
        (predict().await == 200).then_some(())
    })
    .await;

    // One of the two dies: the model moves to the third, the survivor keeps it.
    let victim = d.placed_on[0].clone();
    let survivor = d.placed_on[1].clone();
    execs.get_mut(&victim).unwrap().kill();
    let moved = placement_settled(&client, "placed", |d| {
        d.placed_on.len() == 2 && !d.placed_on.contains(&victim)
    })
    .await;
    assert!(moved.placed_on.contains(&survivor), "{moved:?}");
    assert!(!moved.placed_on.contains(&"exec-small".to_string()));
    assert_eq!(predict().await, 200);

    // Every executor it fits on: the two left with memory; the one offering none is the
    // replica that does not fit.
    set_replicas(0).await.unwrap();
    let all = placement_settled(&client, "placed", |d| d.replicas == 0 && d.unplaced == 1).await;
    assert_eq!(all.placed_on.len(), 2, "{all:?}");
    assert!(!all.placed_on.contains(&"exec-small".to_string()));
}
