//! Secure by default, on real processes over a real etcd: every route of the scheduler's
//! and an executor's port answers each credential (none, unknown, expired, revoked, and a
//! key of every role) as the role matrix says; every gRPC method the protocol declares is
//! in the route table; a revoked key is refused by another node within 5 s; a node asked
//! to listen beyond loopback without a key file (or TLS) refuses to start and says why; SQL
//! and jobs read and write only under the data roots, and SQL writes need a writer's role;
//! nodes talk mutual TLS (their SQL cluster too) and strangers are refused; artifacts,
//! feature tables and event files are sealed with an encryption key; a tampered artifact
//! is refused; mutating calls reach the audit log; no secret reaches a log or an output.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{EtcdCluster, free_port, wait_for};
use halyard_client::proto::CreateKeyRequest;
use halyard_core::auth::{Role, allows};
use halyard_serving::access::{Access, ROUTES};

/// What a route answered: the HTTP status, and for gRPC the `grpc-status` of a
/// trailers-only answer (a refusal; an answer with a body carries it in trailers).
async fn call(
    http: &reqwest::Client,
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
) -> (u16, Option<String>) {
    let grpc = path.starts_with("/halyard.") || path.starts_with("/grpc.");
    let path = path.replace("{model}", "allowed-model:predict");
    let base = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let mut req = match method {
        "GET" => http.get(format!("{base}{path}")),
        _ => http.post(format!("{base}{path}")),
    };
    if grpc {
        req = req
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(grpc_frame(&path));
    } else if method == "POST" {
        req = req.header("content-type", "application/json").body("{}");
    }
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let grpc_status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string());
    (status, grpc_status)
}

/// One gRPC message for `path`: empty, but for the prediction service's, whose field 1 is
/// the model (`allowed-model`, inside the predictor key's pattern).
fn grpc_frame(path: &str) -> Vec<u8> {
    let mut message = Vec::new();
    if path.contains("PredictionService") {
        let model = b"allowed-model";
        message.extend_from_slice(&[0x0a, model.len() as u8]);
        message.extend_from_slice(model);
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    frame
}

/// Whether the answer is the door's refusal: 401/403, or gRPC UNAUTHENTICATED (16) /
/// PERMISSION_DENIED (7).
fn refused(answer: &(u16, Option<String>)) -> Option<&'static str> {
    match answer {
        (401, _) => Some("401"),
        (403, _) => Some("403"),
        (_, Some(s)) if s == "16" => Some("401"),
        (_, Some(s)) if s == "7" => Some("403"),
        _ => None,
    }
}

async fn make_key(
    admin: &halyard_client::Client,
    role: &str,
    models: &str,
    expires: &str,
) -> String {
    admin
        .create_key(CreateKeyRequest {
            name: format!("test-{role}"),
            role: role.into(),
            models: models.into(),
            expires: expires.into(),
        })
        .await
        .unwrap()
        .token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_credential_as_the_role_matrix_says() {
    let tmp = tempfile::tempdir().unwrap();
    let cl = EtcdCluster::new(tmp.path(), "security");
    let api = format!("127.0.0.1:{}", free_port());
    let _scheduler = cl.scheduler("sec-scheduler", &api);
    let (_executor, exec_addr) = cl.executor("sec-exec");
    let admin = cl.connect(&api).await;
    wait_for("the executor", Duration::from_secs(30), || async {
        (admin.cluster().await.ok()?.executors.len() == 1).then_some(())
    })
    .await;
    let admin_key = cl.admin_key().await;
    let mut keys = vec![(Role::Admin, admin_key.clone())];
    for role in [
        Role::Operator,
        Role::Submitter,
        Role::Predictor,
        Role::Viewer,
    ] {
        let models = if role == Role::Predictor {
            "allowed-*"
        } else {
            ""
        };
        keys.push((role, make_key(&admin, role.as_str(), models, "").await));
    }
    let expired = make_key(&admin, "admin", "", "1s").await;
    let revoked = make_key(&admin, "admin", "", "").await;
    let revoked_id = revoked[3..15].to_string();
    admin.revoke_key(&revoked_id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let unknown = format!("hk_0123456789ab_{}", "0".repeat(64));

    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut checked = 0;
    for addr in [api.as_str(), exec_addr.as_str()] {
        for (method, path, access) in ROUTES {
            let action = match access {
                Access::Open => {
                    let answer = call(&http, addr, method, path, None).await;
                    assert_eq!(
                        refused(&answer),
                        None,
                        "open route {method} {path} at {addr}: {answer:?}"
                    );
                    continue;
                }
                Access::Key(a) | Access::ModelKey(a) | Access::Page(a) => *a,
            };
            for (what, key) in [
                ("no key", None),
                ("unknown key", Some(unknown.as_str())),
                ("expired key", Some(expired.as_str())),
                ("revoked key", Some(revoked.as_str())),
            ] {
                let answer = call(&http, addr, method, path, key).await;
                assert_eq!(
                    refused(&answer),
                    Some("401"),
                    "{what} on {method} {path} at {addr}: {answer:?}"
                );
            }
            for (role, key) in &keys {
                let answer = call(&http, addr, method, path, Some(key)).await;
                let want = if allows(*role, action) {
                    None
                } else {
                    Some("403")
                };
                assert_eq!(
                    refused(&answer),
                    want,
                    "{role} on {method} {path} at {addr}: {answer:?}"
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 2 * 20 * 5,
        "checked {checked} route and role pairs"
    );

    // A predictor scores only the models its pattern matches.
    let predictor = &keys.iter().find(|(r, _)| *r == Role::Predictor).unwrap().1;
    let other = http
        .post(format!("http://{api}/v1/models/churn:predict"))
        .header("authorization", format!("Bearer {predictor}"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 403);
    let body = other.text().await.unwrap();
    assert!(
        body.contains("allowed-*") && body.contains("churn"),
        "{body}"
    );
    // A request without a key says what to do.
    let bare = http
        .get(format!("http://{api}/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status().as_u16(), 401);
    assert!(bare.text().await.unwrap().contains("authorization: Bearer"));
}

#[test]
fn every_grpc_method_of_the_protocol_is_in_the_route_table() {
    let proto = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/core/proto/halyard.proto"
    ))
    .unwrap();
    let mut service = "";
    let mut methods = Vec::new();
    for line in proto.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("service ") {
            service = rest.split_whitespace().next().unwrap();
        } else if let Some(rest) = line.strip_prefix("rpc ") {
            let name = rest.split('(').next().unwrap().trim();
            methods.push(format!("/halyard.v1.{service}/{name}"));
        }
    }
    assert!(methods.len() >= 20, "{methods:?}");
    for m in &methods {
        assert!(
            ROUTES
                .iter()
                .any(|(verb, path, _)| *verb == "POST" && path == m),
            "{m} is not in halyard_serving::access::ROUTES: give it an action there and in docs/security.md"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_another_node_within_five_seconds() {
    let tmp = tempfile::tempdir().unwrap();
    let cl = EtcdCluster::new(tmp.path(), "revoke");
    let api = format!("127.0.0.1:{}", free_port());
    let _scheduler = cl.scheduler("rev-scheduler", &api);
    let (_executor, exec_addr) = cl.executor("rev-exec");
    let admin = cl.connect(&api).await;
    let viewer = make_key(&admin, "viewer", "", "").await;
    let http = reqwest::Client::new();
    let models = |addr: String| {
        let (http, viewer) = (http.clone(), viewer.clone());
        async move {
            http.get(format!("http://{addr}/v1/models"))
                .header("authorization", format!("Bearer {viewer}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .ok()
        }
    };
    // The executor knows the key (and caches it) before it is revoked.
    wait_for(
        "the executor to accept the key",
        Duration::from_secs(30),
        || async { (models(exec_addr.clone()).await == Some(200)).then_some(()) },
    )
    .await;
    let revoked_at = Instant::now();
    admin.revoke_key(&viewer[3..15]).await.unwrap();
    wait_for(
        "the executor to refuse the key",
        Duration::from_secs(10),
        || async { (models(exec_addr.clone()).await == Some(401)).then_some(()) },
    )
    .await;
    let took = revoked_at.elapsed();
    eprintln!("revocation reached the executor in {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn a_node_beyond_loopback_without_a_key_file_refuses_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-admin.key");
    let listen = format!("0.0.0.0:{}", free_port());
    // Start a standalone on all interfaces; it must exit: its standard error.
    let refused = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_halyard"))
            .args(["standalone", "--listen", &listen, "--data-dir"])
            .arg(tmp.path().join("state"))
            .arg("--key-file")
            .arg(&missing)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "it started: {stderr}");
        stderr
    };
    let stderr = refused();
    assert!(
        stderr.contains("key_file") && stderr.contains("HALYARD_KEY_FILE"),
        "{stderr}"
    );
    assert!(!missing.exists(), "it wrote a key file");
    // With the key file but without TLS: refused too, naming the TLS flags.
    std::fs::write(
        &missing,
        halyard_core::auth::generate("admin", Role::Admin, None, None, "test", 0).token,
    )
    .unwrap();
    let stderr = refused();
    assert!(
        stderr.contains("--tls-cert") && stderr.contains("halyard certs init"),
        "{stderr}"
    );
    // On loopback, but with its SQL (Ballista) port beyond it: refused the same way,
    // naming that address (`timeout` ends it should it start after all).
    let sql = format!("0.0.0.0:{}", free_port());
    let out = std::process::Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_halyard"))
        .args([
            "standalone",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ])
        .args(["--sql-listen", &sql, "--data-dir"])
        .arg(tmp.path().join("state"))
        .arg("--key-file")
        .arg(&missing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&sql) && stderr.contains("--tls-cert"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_artifact_is_refused_and_the_version_before_keeps_serving() {
    use halyard_cli::registry::{DeployAction, deploy};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = halyard_cli::datagen::generate(&dir.join("data"), 1500, 4).unwrap();
    let (cluster, client) = common::standalone(dir, 1).await;
    let spec = common::spec(dir, "tamper", &data.responses, 2, 128);
    for _ in 0..2 {
        let id = client.submit(&spec).await.unwrap().id;
        let done = common::wait_done(&client, &id, Duration::from_secs(120)).await;
        assert_eq!(done.state, "succeeded", "{}", done.error);
    }
    let version = |n: u64| DeployAction::Version {
        version: n,
        alias: "production".into(),
        percent: None,
    };
    let http = common::http_client(&cluster.admin_key);
    let gw = cluster.scheduler.addr.to_string();
    let served = |http: reqwest::Client, gw: String| async move {
        let v: serde_json::Value = http
            .get(format!("http://{gw}/v1/models/tamper"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())?;
        let versions: Vec<u64> = v["variants"]
            .as_array()?
            .iter()
            .filter_map(|x| x["version"].as_u64())
            .collect();
        Some(versions)
    };
    deploy(&client, "tamper", version(1), false).await.unwrap();
    wait_for("version 1 to serve", Duration::from_secs(30), || {
        let (http, gw) = (http.clone(), gw.clone());
        async move { (served(http, gw).await? == [1]).then_some(()) }
    })
    .await;
    // Someone with write access to the store changes version 2's weights.
    let weights = dir.join("state/store/models/tamper/2/model.safetensors");
    let mut bytes = std::fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    deploy(&client, "tamper", version(2), false).await.unwrap();
    // The host tries to load it (and again every 5 s): it never serves it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(served(http.clone(), gw.clone()).await, Some(vec![1]));
    let answer = http
        .post(format!("http://{gw}/v1/models/tamper:predict"))
        .body(
            r#"{"record": {"customer_id": "c", "age": 40, "income": 52000, "tenure_months": 12, "region": "north", "segment": "value", "channel": "email", "campaign": "loyalty", "offer": "none", "previous_responses": 1, "days_since_last_contact": 30, "emails_opened_30d": 3}}"#,
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["predictions"][0]["version"], 1, "{answer}");
    // Put the byte back: the same version is now loaded (the host retries every 5 s), so
    // the refusal was the changed byte's doing.
    let mut bytes = std::fs::read(&weights).unwrap();
    bytes[last] ^= 0x01;
    std::fs::write(&weights, bytes).unwrap();
    wait_for(
        "the restored version 2 to serve",
        Duration::from_secs(30),
        || {
            let (http, gw) = (http.clone(), gw.clone());
            async move { (served(http, gw).await? == [2]).then_some(()) }
        },
    )
    .await;
    cluster.stop().await;
}

/// Run `sql` on the cluster's SQL port with `key`; the error's text on failure.
async fn sql_on(
    endpoint: &str,
    key: Option<&str>,
    tables: &[(&str, &Path)],
    sql: &str,
) -> Result<usize, String> {
    use halyard_features::session::{DataAccess, remote_context};
    let access = DataAccess::unconfined(&halyard_core::store::S3Config::default());
    let ctx = remote_context(endpoint, key, None, &access, 2)
        .await
        .map_err(|e| e.to_string())?;
    for (name, path) in tables {
        let options = datafusion::prelude::CsvReadOptions::new()
            .file_extension("")
            .delimiter(b'|');
        ctx.register_csv(*name, path.to_str().unwrap(), options)
            .await
            .map_err(|e| e.to_string())?;
    }
    let rows = halyard_features::stage::collect_retrying(&ctx, sql)
        .await
        .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|b| b.num_rows()).sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_and_jobs_read_and_write_only_under_the_data_roots() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let elsewhere = tempfile::tempdir().unwrap();
    let secret = elsewhere.path().join("secret.csv");
    std::fs::write(&secret, "customer,card\nann,4111-1111\n").unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let inside = data.join("inside.csv");
    std::fs::write(&inside, "a,b\n1,2\n3,4\n").unwrap();
    let link = data.join("link.csv");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    // The data roots are `dir` (common::standalone).
    let (cluster, admin) = common::standalone(dir, 1).await;
    let endpoint = wait_for("the sql endpoint", Duration::from_secs(30), || async {
        let c = admin.cluster().await.ok()?;
        (!c.sql_endpoint.is_empty()).then_some(c.sql_endpoint)
    })
    .await;
    let key = Some(cluster.admin_key.as_str());
    assert_eq!(
        sql_on(&endpoint, key, &[("t", &inside)], "SELECT * FROM t").await,
        Ok(2)
    );
    // Outside the roots, through `..`, and through a link inside a root: refused, the
    // message says why and what to do, and no byte of the file comes back.
    let passwd = Path::new("/etc/passwd");
    let dotdot = data
        .join("../../..")
        .join(elsewhere.path().strip_prefix("/").unwrap())
        .join("secret.csv");
    for path in [secret.as_path(), link.as_path(), passwd, dotdot.as_path()] {
        let err = sql_on(&endpoint, key, &[("t", path)], "SELECT * FROM t")
            .await
            .expect_err(&path.display().to_string());
        assert!(
            err.contains("lies outside the data roots"),
            "{path:?}: {err}"
        );
        assert!(err.contains("--data-roots"), "{err}");
        assert!(!err.contains("4111") && !err.contains("root:"), "{err}");
    }
    // COPY: refused outside (nothing written), allowed inside for a writer's role only.
    let out = elsewhere.path().join("out");
    let err = sql_on(
        &endpoint,
        key,
        &[],
        &format!("COPY (SELECT 1 AS x) TO '{}/' STORED AS CSV", out.display()),
    )
    .await
    .unwrap_err();
    assert!(err.contains("lies outside the data roots"), "{err}");
    assert!(!out.exists());
    let copy_inside = format!(
        "COPY (SELECT 1 AS x) TO '{}/' STORED AS CSV",
        dir.join("out").display()
    );
    let submitter = make_key(&admin, "submitter", "", "").await;
    let err = sql_on(&endpoint, Some(&submitter), &[], &copy_inside)
        .await
        .unwrap_err();
    assert!(err.contains("which may not"), "{err}");
    assert!(!dir.join("out").exists());
    assert_eq!(
        sql_on(
            &endpoint,
            Some(&submitter),
            &[("t", &inside)],
            "SELECT * FROM t"
        )
        .await,
        Ok(2)
    );
    assert_eq!(sql_on(&endpoint, key, &[], &copy_inside).await, Ok(1));
    assert!(std::fs::read_dir(dir.join("out")).unwrap().count() > 0);
    // No key, or a viewer's: refused at the port.
    let err = sql_on(&endpoint, None, &[("t", &inside)], "SELECT * FROM t")
        .await
        .unwrap_err();
    assert!(err.contains("no API key"), "{err}");
    let viewer = make_key(&admin, "viewer", "", "").await;
    let err = sql_on(
        &endpoint,
        Some(&viewer),
        &[("t", &inside)],
        "SELECT * FROM t",
    )
    .await
    .unwrap_err();
    assert!(err.contains("which may not"), "{err}");
    // A job reading outside the roots is refused when it is submitted.
    let spec = common::spec(dir, "escape", &secret, 1, 16);
    let err = admin.submit(&spec).await.unwrap_err().to_string();
    assert!(err.contains("lies outside the data roots"), "{err}");
    assert!(admin.jobs().await.unwrap().is_empty());
    // The SQL port's refusals of writes and of locations outside the roots are audited.
    let audit = admin.audit(0).await.unwrap();
    let submitter_id = &submitter[3..15];
    assert!(
        audit.iter().any(|e| e.key_id == submitter_id
            && e.action == halyard_core::auth::Action::SqlWrite.as_str()
            && e.outcome.starts_with("refused:")),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|e| e.action == "sql" && e.outcome.contains("/etc/passwd")),
        "{audit:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_mutual_tls_nodes_train_together_and_strangers_are_refused() {
    use halyard_client::Client;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // One node certificate shared by the test's processes; a stranger's from another CA.
    let certs = halyard_core::certs::init(&dir.join("certs"), &["node".into()]).unwrap();
    let rogue = halyard_core::certs::init(&dir.join("rogue"), &["node".into()]).unwrap();
    let (_, cert, key) = &certs.nodes[0];
    let mut cl = EtcdCluster::new(dir, "mtls");
    cl.flags = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-ca",
        certs.ca.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    let api = format!("127.0.0.1:{}", free_port());
    let _scheduler = cl.scheduler("mtls-scheduler", &api);
    let _a = cl.executor("mtls-exec-a");
    let _b = cl.executor("mtls-exec-b");
    let admin_key = cl.admin_key().await;
    let ca_pem = std::fs::read_to_string(&certs.ca).unwrap();
    let trust = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
    let admin = wait_for(
        "the scheduler over tls",
        Duration::from_secs(30),
        || async {
            Client::connect_secure(&api, Some(&admin_key), Some(trust.clone()))
                .await
                .ok()
        },
    )
    .await;
    wait_for("two executors", Duration::from_secs(60), || async {
        (admin.cluster().await.ok()?.executors.len() == 2).then_some(())
    })
    .await;

    // A data-parallel job: its ring runs over mutual TLS between the executors.
    let data = halyard_cli::datagen::generate(&dir.join("data"), 3000, 3).unwrap();
    let spec = common::data_parallel_spec(dir, "mtls-dp", &data.responses, 2, "epochs = 2", "");
    let id = admin.submit(&spec).await.unwrap().id;
    let done = common::wait_done(&admin, &id, Duration::from_secs(300)).await;
    assert_eq!(done.state, "succeeded", "{}", done.error);
    let log = common::log_text(&admin, &id).await;
    assert!(log.contains("worker group formed: 2 worker(s)"), "{log}");
    // Its feature stage ran on the SQL cluster, whose ports serve TLS too; so does a
    // query from the CLI, trusting the CA (results come through the SQL scheduler).
    assert!(
        log.contains("features: running the SQL on the cluster"),
        "{log}"
    );
    let out = common::sql_command(
        &api,
        &admin_key,
        &["SELECT k, count(*) AS n FROM (VALUES (1), (2), (1)) AS t(k) GROUP BY k ORDER BY k"],
        &dir.join("sql.csv"),
    )
    .arg("--tls-ca")
    .arg(&certs.ca)
    .output()
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.join("sql.csv")).unwrap(),
        "k,n\n1,2\n2,1\n"
    );

    // Plaintext to a TLS port: no answer.
    let plain = async {
        Client::connect_with_key(&api, Some(&admin_key))
            .await
            .ok()?
            .cluster()
            .await
            .ok()
    };
    assert!(plain.await.is_none(), "a plaintext client was answered");
    // A client certificate of another CA: refused in the handshake, key or not.
    let rogue_id = Identity::from_pem(
        std::fs::read(&rogue.nodes[0].1).unwrap(),
        std::fs::read(&rogue.nodes[0].2).unwrap(),
    );
    let stranger = async {
        Client::connect_secure(
            &api,
            Some(&admin_key),
            Some(trust.clone().identity(rogue_id)),
        )
        .await
        .ok()?
        .cluster()
        .await
        .ok()
    };
    assert!(
        stranger.await.is_none(),
        "a certificate of another CA was accepted"
    );
    // The node-only route (a ring link's upgrade): the admin key without a node certificate
    // is refused (403); with the cluster's node certificate it passes the door and reaches
    // the route, which wants an upgrade this request does not ask for (400).
    let link = "/v1/collective/link?group=g%2F1&from=0";
    let base = format!("https://{}", exec_addr_of(&admin).await);
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let anonymous = common::http_builder(&admin_key)
        .add_root_certificate(ca.clone())
        .build()
        .unwrap();
    let answer = call(&anonymous, &base, "GET", link, Some(&admin_key)).await;
    assert_eq!(refused(&answer), Some("403"), "{answer:?}");
    let mut pem = std::fs::read(cert).unwrap();
    pem.extend(std::fs::read(key).unwrap());
    let node = common::http_builder(&admin_key)
        .add_root_certificate(ca)
        .identity(reqwest::Identity::from_pem(&pem).unwrap())
        .build()
        .unwrap();
    let answer = call(&node, &base, "GET", link, Some(&admin_key)).await;
    assert_eq!(answer, (400, None), "{answer:?}");
}

/// The address of one executor of the cluster.
async fn exec_addr_of(client: &halyard_client::Client) -> String {
    client.cluster().await.unwrap().executors[0].address.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_calls_and_refused_attempts_reach_the_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = halyard_cli::datagen::generate(&dir.join("data"), 500, 2).unwrap();
    let (cluster, admin) = common::standalone(dir, 1).await;
    let admin_id = &cluster.admin_key[3..15];
    let viewer = make_key(&admin, "viewer", "", "").await;
    let viewer_id = viewer[3..15].to_string();
    let spec = common::spec(dir, "audited", &data.responses, 1, 64);
    let job = admin.submit(&spec).await.unwrap().id;
    admin.cancel(&job).await.unwrap();
    let as_viewer = common::connect(&cluster.scheduler.addr.to_string(), &viewer).await;
    assert!(as_viewer.submit(&spec).await.is_err());
    assert!(
        as_viewer.audit(0).await.is_err(),
        "a viewer read the audit log"
    );
    admin.revoke_key(&viewer_id).await.unwrap();
    let events = admin.audit(0).await.unwrap();
    let find = |action: &str, key: &str, target: &str| {
        events
            .iter()
            .find(|e| e.action == action && e.key_id == key && e.target == target)
            .unwrap_or_else(|| panic!("no {action} by {key} on {target} in {events:#?}"))
    };
    assert_eq!(
        find("create-key", admin_id, "test-viewer (viewer)").outcome,
        "ok"
    );
    let submitted = find("submit", admin_id, "audited");
    assert_eq!(
        (submitted.outcome.as_str(), submitted.role.as_str()),
        ("ok", "admin")
    );
    assert_eq!(submitted.node, "standalone");
    assert_eq!(find("cancel", admin_id, &job).outcome, "ok");
    // A refusal at the door names the action as the role matrix does, and the route.
    let action = halyard_core::auth::Action::Submit.as_str();
    let refused = find(action, &viewer_id, "/halyard.v1.JobService/Submit");
    assert!(refused.outcome.starts_with("refused:"), "{refused:?}");
    assert_eq!(find("revoke-key", admin_id, &viewer_id).outcome, "ok");
    assert!(events.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    // No secret in the log.
    let text = format!("{events:?}");
    assert!(!text.contains(&viewer[16..]) && !text.contains(&cluster.admin_key[16..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_encryption_key_artifacts_are_sealed_in_the_store_and_still_serve() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = halyard_cli::datagen::generate(&dir.join("data"), 800, 5).unwrap();
    let key_file = dir.join("encryption.key");
    std::fs::write(&key_file, "5a".repeat(32)).unwrap();
    let settings = halyard_core::config::Settings {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.join("state")),
        data_roots: Some(vec![dir.display().to_string()]),
        executors: Some(1),
        encryption_key_file: Some(key_file.clone()),
        ..Default::default()
    };
    let cluster = halyard::start_standalone(settings).await.unwrap();
    let client = common::client_of(&cluster).await;
    let spec = common::spec(dir, "sealed", &data.responses, 1, 64);
    let id = client.submit(&spec).await.unwrap().id;
    let done = common::wait_done(&client, &id, Duration::from_secs(120)).await;
    assert_eq!(done.state, "succeeded", "{}", done.error);
    // On disk: sealed, no plaintext of the manifest or the weights' header.
    let model_dir = dir.join("state/store/models/sealed/1");
    for file in ["model.safetensors", "manifest.json"] {
        let raw = std::fs::read(model_dir.join(file)).unwrap();
        assert!(halyard_core::seal::is_sealed(&raw), "{file} is not sealed");
        assert!(
            !raw.windows(8)
                .any(|w| w == b"\"format\"" || w == b"customer"),
            "{file}"
        );
    }
    // A feature stage's table, written by the SQL cluster: sealed too, and read back by
    // the stage's statistics query and by the training that follows.
    let spec =
        common::data_parallel_spec(dir, "sealed-features", &data.responses, 1, "epochs = 1", "");
    let features_job = client.submit(&spec).await.unwrap().id;
    let done = common::wait_done(&client, &features_job, Duration::from_secs(180)).await;
    assert_eq!(done.state, "succeeded", "{}", done.error);
    let table = dir.join(format!("state/store/jobs/{features_job}/features"));
    let mut shards = 0;
    for entry in std::fs::read_dir(&table).unwrap() {
        let path = entry.unwrap().path();
        let raw = std::fs::read(&path).unwrap();
        assert!(
            halyard_core::seal::is_sealed(&raw),
            "{} is not sealed",
            path.display()
        );
        assert!(!raw.windows(4).any(|w| w == b"PAR1"), "{}", path.display());
        shards += usize::from(path.extension().is_some_and(|e| e == "parquet"));
    }
    assert_eq!(shards, 6, "{}", table.display());
    // Served: the node opens what it sealed (and the digests, of the plaintext, match).
    common::deploy(&client, "sealed", 1, "production", None).await;
    let http = common::http_client(&cluster.admin_key);
    let addr = cluster.scheduler.addr.to_string();
    wait_for(
        "the sealed model to serve",
        Duration::from_secs(30),
        || async {
            let r = http
                .get(format!("http://{addr}/v1/models/sealed"))
                .send()
                .await
                .ok()?;
            (r.status().as_u16() == 200).then_some(())
        },
    )
    .await;
    // Outcomes: the event log's files in the store are sealed, and `halyard sql` with
    // the nodes' key in its environment reads them on the cluster.
    let body: Vec<_> = (0..40)
        .map(|i| serde_json::json!({"version": 1, "key": format!("k{i}"), "converted": i % 4 == 0}))
        .collect();
    let answer = http
        .post(format!("http://{addr}/v1/models/sealed:feedback"))
        .header("content-type", "application/json")
        .body(serde_json::Value::from(body).to_string())
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{:?}", answer.text().await);
    let events = dir.join("state/store/events/sealed");
    let files = wait_for("the event files", Duration::from_secs(60), || async {
        let files: Vec<PathBuf> = common::files_under(&events)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        (!files.is_empty()).then_some(files)
    })
    .await;
    for file in &files {
        let raw = std::fs::read(file).unwrap();
        assert!(halyard_core::seal::is_sealed(&raw), "{}", file.display());
        assert!(!raw.windows(3).any(|w| w == b"k17"), "{}", file.display());
    }
    let table = format!(
        "CREATE EXTERNAL TABLE ev STORED AS PARQUET LOCATION 'file://{}/'",
        events.display()
    );
    let out = common::sql_command(
        &addr,
        &cluster.admin_key,
        &[
            &table,
            "SELECT count(*) AS n FROM ev WHERE kind = 'outcome' AND key = 'k17'",
        ],
        &dir.join("events.csv"),
    )
    .env("HALYARD_ENCRYPTION_KEY_FILE", &key_file)
    .env("HALYARD_DATA_DIR", dir.join("state"))
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("events.csv")).unwrap(),
        "n\n1\n"
    );
    // A store opened without the key cannot read it, and says which key it needs.
    let url = format!("file://{}", dir.join("state/store").display());
    let bare = halyard_core::store::Store::open(&url, &Default::default()).unwrap();
    let err = bare
        .get("models/sealed/1/manifest.json")
        .await
        .unwrap_err()
        .to_string();
    let sealer = halyard_core::seal::Sealer::from_text(&"5a".repeat(32), "test").unwrap();
    assert!(err.contains(sealer.id()), "{err}");
    // The registry records the key's id with the version.
    let model = client.model("sealed").await.unwrap();
    assert_eq!(model.versions[0].sealed_with, sealer.id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_reseals_every_object_and_the_old_key_can_go() {
    use halyard_core::seal::Sealer;
    use halyard_core::store::Store;
    let tmp = tempfile::tempdir().unwrap();
    let store_dir = tmp.path().join("store");
    let url = format!("file://{}", store_dir.display());
    let (old, new) = ("5a".repeat(32), "c3".repeat(32));
    let with = |keys: &str| {
        Store::open(&url, &Default::default())
            .unwrap()
            .sealed(Some(std::sync::Arc::new(
                Sealer::from_text(keys, "test").unwrap(),
            )))
    };
    let before = with(&old);
    before
        .put(
            "models/m/1/model.safetensors",
            bytes::Bytes::from_static(b"weights"),
        )
        .await
        .unwrap();
    before
        .put(
            "jobs/j/features/features.json",
            bytes::Bytes::from_static(b"{}"),
        )
        .await
        .unwrap();
    Store::open(&url, &Default::default())
        .unwrap()
        .put("events/m/x.parquet", bytes::Bytes::from_static(b"plain"))
        .await
        .unwrap();
    // The new key first, the old one after it.
    let keys = tmp.path().join("keys");
    std::fs::write(&keys, format!("{new}\n{old}\n")).unwrap();
    let reseal = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_halyard"))
            .args(["reseal", "--store", &url, "--encryption-key-file"])
            .arg(&keys)
            .arg("--data-dir")
            .arg(tmp.path().join("state"))
            .output()
            .unwrap();
        common::succeeded(&out)
    };
    let said = reseal();
    assert!(said.starts_with("2 of 3 objects"), "{said}");
    assert!(
        reseal().starts_with("0 of 3 objects"),
        "a second run has nothing to do"
    );
    // The new key alone opens everything; the old key alone opens nothing sealed.
    let after = with(&new);
    assert_eq!(
        &after.get("models/m/1/model.safetensors").await.unwrap()[..],
        b"weights"
    );
    assert_eq!(
        &after.get("jobs/j/features/features.json").await.unwrap()[..],
        b"{}"
    );
    assert_eq!(
        &after.get("events/m/x.parquet").await.unwrap()[..],
        b"plain"
    );
    let err = with(&old)
        .get("models/m/1/model.safetensors")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(Sealer::from_text(&new, "t").unwrap().id()),
        "{err}"
    );
    // No secret in what it printed.
    assert!(!said.contains(&new) && !said.contains(&old));
}
