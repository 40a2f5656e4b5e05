//! Every model type through a standalone cluster: an MLP ensemble and an N-BEATS forecaster
//! with a covariate train, publish and load in the candle runtime; boosted trees fitting a
//! count train, publish as `halyard-model/3` and serve counts; a GPU job on a build without
//! GPU support fails with a message that says how to fix it.

mod common;

use std::path::Path;
use std::time::Duration;

use halyard_core::spec::JobSpec;
use halyard_models::forecast::Series;
use halyard_models::runtime::LoadedModel;

fn write_spec(dir: &Path, name: &str, text: &str) -> JobSpec {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, text).unwrap();
    JobSpec::from_file(&p).unwrap()
}

fn load(store: &Path, name: &str) -> LoadedModel {
    let v = common::published_versions(store, name);
    assert_eq!(v, vec![1], "one version of {name}");
    let dir = store.join("models").join(name).join("1");
    LoadedModel::from_bytes(
        &std::fs::read(dir.join("model.safetensors")).unwrap(),
        &std::fs::read(dir.join("manifest.json")).unwrap(),
    )
    .expect("the artifact loads")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mlp_and_nbeats_jobs_train_publish_and_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = halyard_cli::datagen::generate(dir, 3000, 9).unwrap();
    let settings = halyard_core::config::Settings {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.join("state")),
        data_roots: Some(vec![dir.display().to_string()]),
        executors: Some(1),
        gpus: Some(1),
        ..Default::default()
    };
    let cluster = halyard::start_standalone(settings).await.unwrap();
    let client = common::client_of(&cluster).await;
    let store = dir.join("state").join("store");

    let mlp = write_spec(
        dir,
        "mlp",
        &format!(
            "name = \"resp-mlp\"\n[data]\nsource = \"{}\"\nlabel = \"responded\"\nexclude = [\"customer_id\"]\n\
             [model]\ntype = \"mlp\"\nhidden = [16]\nensemble = 2\nnumeric_buckets = 8\n\
             [train]\nepochs = 4\nbatch_size = 128\nlearning_rate = 0.01\ndevice = \"cpu\"\n",
            data.responses.display()
        ),
    );
    let nbeats = write_spec(
        dir,
        "nbeats",
        &format!(
            "name = \"kpi-nbeats\"\n[data]\nsource = \"{}\"\n[model]\ntype = \"nbeats\"\n\
             [train]\nbatch_size = 64\nlearning_rate = 0.002\n\
             [forecast]\nhorizon = 7\nperiod = 7\nlayout = \"long\"\nid_column = \"campaign\"\n\
             value_column = \"conversions\"\ncovariates = [\"promotion\"]\nlookbacks = [2, 3]\n\
             blocks = 2\nlayers = 2\nwidth = 32\nsteps = 60\n",
            data.kpis.display()
        ),
    );
    let counts = write_spec(
        dir,
        "counts",
        &format!(
            "name = \"responses-count\"\n[data]\nsource = \"{}\"\nlabel = \"previous_responses\"\n\
             exclude = [\"customer_id\", \"responded\"]\n\
             [model]\ntype = \"gbdt\"\nobjective = \"poisson\"\ntrees = 60\nnum_leaves = 7\n",
            data.responses.display()
        ),
    );
    for spec in [&mlp, &nbeats, &counts] {
        let job = client.submit(spec).await.unwrap();
        let done = common::wait_done(&client, &job.id, Duration::from_secs(180)).await;
        assert_eq!(done.state, "succeeded", "{}: {done:?}", spec.name);
    }

    // The MLP: metrics of the served artifact, and raw records scored without the label.
    let m = load(&store, "resp-mlp");
    assert_eq!(m.manifest.architecture.kind(), "mlp");
    for key in [
        "test_auc",
        "test_log_loss",
        "test_ece",
        "test_top_decile_lift",
    ] {
        assert!(
            m.manifest.metrics.contains_key(key),
            "{key}: {:?}",
            m.manifest.metrics
        );
    }
    assert!(
        m.manifest.metrics["test_auc"] > 0.6,
        "{:?}",
        m.manifest.metrics
    );
    let text = std::fs::read_to_string(&data.responses).unwrap();
    let head: String = text.lines().take(21).collect::<Vec<_>>().join("\n");
    let table =
        halyard_core::data::read_table(&bytes::Bytes::from(head), &mlp.data, "head.csv").unwrap();
    let label_free: Vec<_> = table
        .batches
        .iter()
        .map(|b| {
            let keep: Vec<usize> = (0..b.num_columns())
                .filter(|&i| b.schema().field(i).name() != "responded")
                .collect();
            b.project(&keep).unwrap()
        })
        .collect();
    let p = m.score(&label_free).unwrap();
    assert_eq!(p.len(), 20);
    assert!(p.iter().all(|v| (0.0..=1.0).contains(v)));

    // The forecaster: test metrics against Naive2, and a forecast from a history.
    let f = load(&store, "kpi-nbeats");
    assert_eq!(f.manifest.architecture.kind(), "nbeats");
    for key in ["test_smape", "test_mase", "test_owa", "naive2_smape"] {
        assert!(
            f.manifest.metrics.contains_key(key),
            "{key}: {:?}",
            f.manifest.metrics
        );
    }
    let history = Series {
        id: "c".into(),
        values: (0..60).map(|t| 40.0 + (t % 7) as f64).collect(),
        covariates: (0..67)
            .map(|t| vec![f64::from(u8::from(t % 10 == 0))])
            .collect(),
    };
    let out = f.forecast(&[history], 7).unwrap();
    assert_eq!(out[0].len(), 7);
    assert!(out[0].iter().all(|v| v.is_finite() && *v >= 0.0), "{out:?}");

    // Trees fitting a count: errors instead of a ranking, a format older readers refuse,
    // and the served score the artifact's expected count, not a probability.
    let c = load(&store, "responses-count");
    assert_eq!(c.manifest.format, halyard_models::artifact::FORMAT_NUMERIC);
    for key in ["test_rmse", "test_mae", "test_r2", "test_poisson_deviance"] {
        assert!(
            c.manifest.metrics.contains_key(key),
            "{key}: {:?}",
            c.manifest.metrics
        );
    }
    assert!(!c.manifest.metrics.contains_key("test_auc"));
    common::deploy(&client, "responses-count", 1, "production", None).await;
    let record = serde_json::json!({"record": {
        "age": 44, "income": 52000, "tenure_months": 30, "region": "north", "segment": "premium",
        "channel": "email", "campaign": "loyalty", "offer": "discount_10",
        "days_since_last_contact": 12, "emails_opened_30d": 6
    }});
    let served = common::predict_when_served(&cluster, "responses-count", record.clone()).await;
    let score = served["predictions"][0]["score"].as_f64().unwrap();
    let encoder = halyard_models::json_records::RecordEncoder::new(
        c.manifest.architecture.preprocessor().unwrap().clone(),
    );
    let encoded = encoder
        .encode(&[record["record"].as_object().unwrap()])
        .unwrap();
    let local = c.runtime.score_encoded(&encoded).unwrap()[0];
    eprintln!("served count {score}, the artifact's {local}");
    assert!(score > 0.0, "{served}");
    assert!(
        (score - f64::from(local)).abs() < 1e-6,
        "served {score}, artifact {local}"
    );

    // A GPU job on this build: placed on the executor advertising a GPU, then failed with a
    // message naming the fix (a GPU build runs it instead).
    if !halyard_models::device::GPU_BUILD {
        let mut gpu = mlp.clone();
        gpu.name = "resp-gpu".into();
        gpu.train.device = halyard_core::spec::DeviceKind::Gpu;
        gpu.resources.gpus = 1;
        let job = client.submit(&gpu).await.unwrap();
        let done = common::wait_done(&client, &job.id, Duration::from_secs(60)).await;
        assert_eq!(done.state, "failed", "{done:?}");
        assert!(done.error.contains("--features gpu"), "{}", done.error);
    }
    cluster.stop().await;
}
