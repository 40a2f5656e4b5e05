//! Object storage over S3 against a real S3 protocol server that checks signatures
//! (s3s-fs, in-process): an artifact round trip with the right credentials, a clear error
//! with the wrong ones, a training job whose data and model both live in S3, and a feature
//! stage that reads its sources from S3 and writes its shards there.

mod common;

use std::time::Duration;

use bytes::Bytes;
use halyard_core::Error;
use halyard_core::config::Settings;
use halyard_core::store::{S3Config, Store, publish_model, read_model, read_url};

const AK: &str = "halyard-test-key";
const SK: &str = "halyard-test-secret-0123456789";

fn creds(endpoint: &str, secret: &str) -> S3Config {
    S3Config {
        endpoint: Some(endpoint.to_string()),
        region: Some("us-east-1".into()),
        access_key_id: Some(AK.into()),
        secret_access_key: Some(secret.into()),
        ca_file: None,
        retry_secs: Some(2),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_round_trip_and_wrong_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("s3/models-bucket")).unwrap();
    let (addr, _server) = halyard_s3_server::spawn(&tmp.path().join("s3"), AK, SK)
        .await
        .unwrap();
    let endpoint = format!("http://{addr}");

    let store = Store::open("s3://models-bucket/team-a", &creds(&endpoint, SK)).unwrap();
    assert!(read_model(&store, "m", 1).await.unwrap().is_none());
    let url = publish_model(
        &store,
        "m",
        1,
        Bytes::from_static(b"weights"),
        Bytes::from_static(b"{}"),
    )
    .await
    .unwrap();
    assert_eq!(url, "s3://models-bucket/team-a/models/m/1");
    let (w, m) = read_model(&store, "m", 1).await.unwrap().unwrap();
    assert_eq!((&w[..], &m[..]), (&b"weights"[..], &b"{}"[..]));
    // It is really in the server's folder, under the prefix.
    assert!(
        tmp.path()
            .join("s3/models-bucket/team-a/models/m/1/manifest.json")
            .exists()
    );

    let bad = Store::open(
        "s3://models-bucket/team-a",
        &creds(&endpoint, "wrong-secret"),
    )
    .unwrap();
    let err = bad.get("models/m/1/manifest.json").await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Store { .. }), "{text}");
    assert!(
        text.contains("access denied") && text.contains("access key"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-secret"),
        "the secret leaked into an error: {text}"
    );

    let err = read_url("s3://models-bucket/nope.csv", &creds(&endpoint, SK))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_reads_data_from_s3_and_publishes_to_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let s3_root = tmp.path().join("s3");
    std::fs::create_dir_all(s3_root.join("lake/campaign")).unwrap();
    std::fs::create_dir_all(s3_root.join("models")).unwrap();
    let data = halyard_cli::datagen::generate(&tmp.path().join("gen"), 2000, 5).unwrap();
    std::fs::copy(&data.responses, s3_root.join("lake/campaign/responses.csv")).unwrap();
    let (addr, _server) = halyard_s3_server::spawn(&s3_root, AK, SK).await.unwrap();

    let settings = Settings {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(tmp.path().join("state")),
        data_roots: Some(vec![tmp.path().display().to_string(), "s3://lake".into()]),
        store: Some("s3://models/halyard".into()),
        executors: Some(1),
        ..Default::default()
    }
    .with_s3(creds(&format!("http://{addr}"), SK));
    let cluster = halyard::start_standalone(settings).await.unwrap();
    let client = common::client_of(&cluster).await;
    let spec_path = tmp.path().join("s3job.toml");
    std::fs::write(
        &spec_path,
        "name = \"s3job\"\n[data]\nsource = \"s3://lake/campaign/responses.csv\"\nlabel = \"responded\"\n\
         exclude = [\"customer_id\"]\n[train]\nepochs = 2\n",
    )
    .unwrap();
    let spec = halyard_core::spec::JobSpec::from_file(&spec_path).unwrap();
    let job = client.submit(&spec).await.unwrap();
    let done = common::wait_done(&client, &job.id, Duration::from_secs(120)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    assert_eq!(done.artifact, "s3://models/halyard/models/s3job/1");
    assert!(
        s3_root
            .join("models/halyard/models/s3job/1/model.safetensors")
            .exists()
    );
    cluster.stop().await;
}

/// The feature stage reads its sources from S3 and writes its shards to S3 (s3s-fs checks
/// every request's signature); with a wrong secret the job fails with a message that
/// names the problem and never the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn feature_stage_reads_and_writes_s3() {
    let tmp = tempfile::tempdir().unwrap();
    let s3_root = tmp.path().join("s3");
    std::fs::create_dir_all(s3_root.join("lake/campaign")).unwrap();
    std::fs::create_dir_all(s3_root.join("models")).unwrap();
    let data = halyard_cli::datagen::generate(&tmp.path().join("gen"), 1500, 9).unwrap();
    std::fs::copy(&data.responses, s3_root.join("lake/campaign/responses.csv")).unwrap();
    let (addr, _server) = halyard_s3_server::spawn(&s3_root, AK, SK).await.unwrap();
    let spec_text = |name: &str| {
        format!(
            "name = \"{name}\"\n\
             [[features.sources]]\nname = \"responses\"\npath = \"s3://lake/campaign/responses.csv\"\n\
             [features]\nsql = \"SELECT *, hash_bucket(region, 4) AS region_bucket FROM responses\"\nshards = 2\n\
             [features.split]\nmethod = \"hash\"\nkey = \"customer_id\"\ntest_percent = 20\n\
             [data]\nlabel = \"responded\"\nexclude = [\"customer_id\"]\n[train]\nepochs = 2\n"
        )
    };
    for (secret, ok) in [(SK, true), ("a-wrong-secret-value", false)] {
        let name = if ok { "s3feat" } else { "s3feat-denied" };
        let settings = Settings {
            listen: Some("127.0.0.1:0".into()),
            data_dir: Some(tmp.path().join(format!("state-{name}"))),
            data_roots: Some(vec![tmp.path().display().to_string(), "s3://lake".into()]),
            // The models go to a local folder in the denied case, so only the feature
            // stage meets the wrong secret.
            store: ok.then(|| "s3://models/halyard".to_string()),
            executors: Some(2),
            ..Default::default()
        }
        .with_s3(creds(&format!("http://{addr}"), secret));
        let cluster = halyard::start_standalone(settings).await.unwrap();
        let client = common::client_of(&cluster).await;
        let path = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&path, spec_text(name)).unwrap();
        let spec = halyard_core::spec::JobSpec::from_file(&path).unwrap();
        let job = client.submit(&spec).await.unwrap();
        let done = common::wait_done(&client, &job.id, Duration::from_secs(120)).await;
        if ok {
            assert_eq!(done.state, "succeeded", "{done:?}");
            let dir = s3_root
                .join("models/halyard/jobs")
                .join(&job.id)
                .join("features");
            for f in ["part-00000.parquet", "part-00001.parquet", "features.json"] {
                assert!(dir.join(f).exists(), "{f} in S3");
            }
            let table: halyard_features::stage::FeatureTable =
                serde_json::from_slice(&std::fs::read(dir.join("features.json")).unwrap()).unwrap();
            assert_eq!(table.rows, 1500);
            assert!(table.columns.iter().any(|c| c.name == "region_bucket"));
        } else {
            assert_eq!(done.state, "failed", "{done:?}");
            assert!(done.error.contains("responses"), "{}", done.error);
            assert!(
                done.error.contains("access denied by the S3 server"),
                "{}",
                done.error
            );
            assert!(
                !done.error.contains(secret),
                "the secret leaked: {}",
                done.error
            );
            assert!(
                !common::log_text(&client, &job.id).await.contains(secret),
                "the secret leaked into the log"
            );
        }
        cluster.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_endpoint_is_trusted_through_the_ca_bundle_and_refused_without_it() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("s3/secure")).unwrap();
    let certs = halyard_core::certs::init(&tmp.path().join("certs"), &["s3".into()]).unwrap();
    let (_, cert, key) = &certs.nodes[0];
    let tls = halyard_core::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: None,
    }
    .load()
    .unwrap();
    let (addr, _server) =
        halyard_s3_server::spawn_with(&tmp.path().join("s3"), AK, SK, Some(tls.server.clone()))
            .await
            .unwrap();
    let endpoint = format!("https://127.0.0.1:{}", addr.port());
    let trusted = S3Config {
        ca_file: Some(certs.ca.clone()),
        ..creds(&endpoint, SK)
    };
    let store = halyard_core::store::Store::open("s3://secure/halyard", &trusted).unwrap();
    store
        .put("x/a.bin", bytes::Bytes::from_static(b"over tls"))
        .await
        .unwrap();
    assert_eq!(store.get("x/a.bin").await.unwrap().as_ref(), b"over tls");
    assert!(tmp.path().join("s3/secure/halyard/x/a.bin").exists());
    // Without the CA the server's certificate is not trusted: nothing is read or written.
    let untrusted =
        halyard_core::store::Store::open("s3://secure/halyard", &creds(&endpoint, SK)).unwrap();
    assert!(untrusted.get("x/a.bin").await.is_err());
    assert!(
        untrusted
            .put("x/b.bin", bytes::Bytes::from_static(b"no"))
            .await
            .is_err()
    );
    assert!(!tmp.path().join("s3/secure/halyard/x/b.bin").exists());
}

/// The S3 server stops (listener and every connection closed) while a data-parallel job
/// writes a checkpoint every step, and comes back 4 s later: the writes retry, the job
/// succeeds once, its one version whole in S3. Then it stays down past `s3_retry_secs`:
/// the job publishing meanwhile fails with a message that says the S3 server did not
/// answer, no half version is visible, and the model deployed before keeps answering
/// predictions throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_outage_is_ridden_out_and_a_long_one_fails_the_job_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s3_root = dir.join("s3");
    std::fs::create_dir_all(s3_root.join("models")).unwrap();
    let data = halyard_cli::datagen::generate(&dir.join("gen"), 3000, 11).unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut s3 = common::s3_on(addr, &s3_root, AK, SK).await;
    let settings = Settings {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.join("state")),
        data_roots: Some(vec![dir.display().to_string()]),
        store: Some("s3://models/halyard".into()),
        executors: Some(2),
        ..Default::default()
    }
    .with_s3(S3Config {
        retry_secs: Some(12),
        ..creds(&format!("http://{addr}"), SK)
    });
    let cluster = halyard::start_standalone(settings).await.unwrap();
    let client = common::client_of(&cluster).await;

    // A model deployed and answering before any outage.
    let first = common::spec(dir, "served", &data.responses, 1, 256);
    common::train_and_deploy(&client, &first, 1).await;
    let http = common::http_client(&cluster.admin_key);
    let api = cluster.scheduler.addr.to_string();
    let body = common::first_record_body(&first, &data.responses);
    let predict = || common::predict_status(&http, &api, "served", &body);
    common::wait_for("the model to serve", Duration::from_secs(60), || async {
        (predict().await == 200).then_some(())
    })
    .await;

    // A short outage from before the job starts: its feature stage writes its shards to
    // S3 through the SQL cluster, which cannot end while the server is down.
    let spec = common::data_parallel_spec(
        dir,
        "outage",
        &data.responses,
        2,
        "epochs = 2\ncheckpoint_steps = 1\ncheckpoint_secs = 0\nstep_timeout_secs = 60",
        "",
    );
    s3.abort();
    let _ = (&mut s3).await;
    let job = client.submit(&spec).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during = client.job(&job.id).await.unwrap();
    assert_eq!(
        (during.state.as_str(), during.attempt),
        ("running", 1),
        "the job waits for the store, neither failed nor retried: {during:?}"
    );
    assert_eq!(predict().await, 200, "serving during the outage");
    s3 = common::s3_on(addr, &s3_root, AK, SK).await;
    let done = common::wait_done(&client, &job.id, Duration::from_secs(300)).await;
    // Two attempts: the feature step's and the training step's; none lost to the outage.
    assert_eq!(
        (done.state.as_str(), done.attempt),
        ("succeeded", 2),
        "{done:?}"
    );
    let store = s3_root.join("models/halyard");
    assert_eq!(common::published_versions(&store, "outage"), vec![1]);
    assert!(store.join("models/outage/1/manifest.json").exists());

    // An outage longer than the retry time: the publish fails the job, clearly.
    s3.abort();
    let _ = (&mut s3).await;
    let long = common::spec(dir, "long-outage", &data.responses, 1, 256);
    let job = client.submit(&long).await.unwrap();
    let done = common::wait_done(&client, &job.id, Duration::from_secs(120)).await;
    assert_eq!(done.state, "failed", "{done:?}");
    assert!(
        done.error
            .contains("the S3 server did not answer within s3_retry_secs")
            && done.error.contains("s3://models/halyard"),
        "{}",
        done.error
    );
    assert_eq!(predict().await, 200, "serving during the long outage");
    let _s3 = common::s3_on(addr, &s3_root, AK, SK).await;
    assert!(
        client.model("long-outage").await.is_err(),
        "no version of the failed job is registered"
    );
    assert!(
        !s3_root
            .join("models/halyard/models/long-outage/1/manifest.json")
            .exists(),
        "no half version is visible"
    );
    cluster.stop().await;
}
