//! Test harness: real `halyard` processes on free loopback ports, with their logs kept and
//! shown when a test fails, and killed when dropped.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use halyard_client::Client;
use halyard_core::proto::JobInfo;
use halyard_core::spec::JobSpec;

/// A free TCP port on loopback, never one this test process handed out before: the
/// process given a port binds it only when it starts, and the OS may give the same free
/// port to the next caller meanwhile (two executors once raced for one).
pub(crate) fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// The etcd the tests use (`.ci/run` starts it and sets `HALYARD_TEST_ETCD`).
pub(crate) fn etcd_endpoint() -> String {
    std::env::var("HALYARD_TEST_ETCD").expect(
        "HALYARD_TEST_ETCD is not set: cluster tests need a real etcd; run .ci/run, which starts one",
    )
}

/// A spawned `halyard` process.
pub(crate) struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &str, dir: &Path, args: &[&str]) -> Proc {
        let log = dir.join(format!("{name}.log"));
        // Appended: a process started again under the same name keeps its past runs' lines.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        // Run in `dir`, as a user would: a standalone's data roots include it.
        let child = Command::new(env!("CARGO_BIN_EXE_halyard"))
            .current_dir(dir)
            .args(args)
            .env("HALYARD_LOG", "info,halyard=debug")
            .stdout(Stdio::from(file.try_clone().unwrap()))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    /// kill -9.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("----- {} log (last 60 lines) -----", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// The standard output of a finished `halyard` run, after checking that it succeeded
/// (else the test fails with both of its outputs).
pub(crate) fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Poll `f` until it returns `Some`, or panic after `timeout` naming `what`.
pub(crate) async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Connect to a scheduler once it answers, with the API key `key`.
pub(crate) async fn connect(addr: &str, key: &str) -> Client {
    wait_for(
        &format!("scheduler at {addr}"),
        Duration::from_secs(30),
        || async { Client::connect_with_key(addr, Some(key)).await.ok() },
    )
    .await
}

/// A standalone cluster in this process with `executors` executors and its state under
/// `dir/state`, and a client connected to it.
pub(crate) async fn standalone(dir: &Path, executors: u32) -> (halyard::Standalone, Client) {
    let settings = halyard_core::config::Settings {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(dir.join("state")),
        data_roots: Some(vec![dir.display().to_string()]),
        executors: Some(executors),
        ..Default::default()
    };
    let cluster = halyard::start_standalone(settings).await.unwrap();
    let client = client_of(&cluster).await;
    (cluster, client)
}

/// A client of a standalone cluster, with its admin key.
pub(crate) async fn client_of(cluster: &halyard::Standalone) -> Client {
    connect(&cluster.scheduler.addr.to_string(), &cluster.admin_key).await
}

/// An HTTP client that sends the API key `key` with every request.
pub(crate) fn http_client(key: &str) -> reqwest::Client {
    http_builder(key).build().unwrap()
}

/// The builder of [`http_client`], for other settings.
pub(crate) fn http_builder(key: &str) -> reqwest::ClientBuilder {
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
    auth.set_sensitive(true);
    reqwest::Client::builder().default_headers(reqwest::header::HeaderMap::from_iter([(
        reqwest::header::AUTHORIZATION,
        auth,
    )]))
}

/// A job's log (scheduler events and executor progress) as one text.
pub(crate) async fn log_text(client: &Client, id: &str) -> String {
    let lines: Vec<String> = client
        .logs(id)
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.message)
        .collect();
    lines.join("\n")
}

/// Write a response-model spec for `data` and parse it as the client does.
pub(crate) fn spec(dir: &Path, name: &str, data: &Path, epochs: u32, batch: usize) -> JobSpec {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "name = \"{name}\"\n[data]\nsource = \"{}\"\nlabel = \"responded\"\nexclude = [\"customer_id\"]\n\
             [train]\nepochs = {epochs}\nbatch_size = {batch}\nlearning_rate = 0.01\n",
            data.display()
        ),
    )
    .unwrap();
    JobSpec::from_file(&path).unwrap()
}

/// Wait until the job ends; returns its final state.
pub(crate) async fn wait_done(client: &Client, id: &str, timeout: Duration) -> JobInfo {
    wait_for(&format!("job {id} to end"), timeout, || async {
        let j = client.job(id).await.ok()?;
        matches!(j.state.as_str(), "succeeded" | "failed" | "cancelled").then_some(j)
    })
    .await
}

/// Versions of a model published in a `file://` store folder.
pub(crate) fn published_versions(store: &Path, name: &str) -> Vec<u64> {
    let dir = store.join("models").join(name);
    let mut v: Vec<u64> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file under `dir`, at any depth (none when it does not exist).
pub(crate) fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                files_under(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

/// `halyard sql` on the cluster whose scheduler is at `addr`, with `key`: `statements` in
/// order, the last one's rows written to `output` (CSV); more flags or environment may be
/// added before it runs.
pub(crate) fn sql_command(addr: &str, key: &str, statements: &[&str], output: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_halyard"));
    command.args(["sql", "--scheduler", addr, "--key", key]);
    for s in statements {
        command.arg("-e").arg(s);
    }
    command.arg("--output").arg(output);
    command
}

/// Processes of one cluster on a real etcd: the key root, the store, the admin key file
/// and the flags they share (2 s leases, so lost nodes are noticed quickly).
pub(crate) struct EtcdCluster {
    pub dir: PathBuf,
    pub etcd: String,
    pub root: String,
    pub store_url: String,
    /// The data roots of its processes (`--data-roots`): `dir`, and more when a test adds.
    pub data_roots: Vec<String>,
    /// Flags every process of the cluster gets (TLS, say).
    pub flags: Vec<String>,
}

impl EtcdCluster {
    /// A cluster under its own key root, storing in `dir/store`.
    pub(crate) fn new(dir: &Path, name: &str) -> EtcdCluster {
        EtcdCluster {
            dir: dir.to_path_buf(),
            etcd: etcd_endpoint(),
            root: format!("/halyard-{name}/{}", std::process::id()),
            store_url: format!("file://{}", dir.join("store").display()),
            data_roots: vec![dir.display().to_string()],
            flags: Vec::new(),
        }
    }

    /// A `role` process `id` on `listen`, in this cluster, with `extra` flags.
    fn spawn(&self, role: &str, id: &str, listen: &str, extra: &[&str]) -> Proc {
        let key_file = self.key_file().display().to_string();
        let roots = self.data_roots.join(",");
        let mut args = vec![
            role,
            "--listen",
            listen,
            "--id",
            id,
            "--etcd",
            &self.etcd,
            "--etcd-root",
            &self.root,
            "--lease-ttl",
            "2",
            "--key-file",
            &key_file,
            "--data-roots",
            &roots,
        ];
        args.extend_from_slice(extra);
        args.extend(self.flags.iter().map(String::as_str));
        Proc::spawn(id, &self.dir, &args)
    }

    /// The admin key file every process of the cluster shares (the first one makes it).
    pub(crate) fn key_file(&self) -> PathBuf {
        self.dir.join("admin.key")
    }

    /// The cluster's admin key, once its first process has written it.
    pub(crate) async fn admin_key(&self) -> String {
        let file = self.key_file();
        wait_for(
            "the cluster's admin key",
            Duration::from_secs(30),
            || async {
                std::fs::read_to_string(&file)
                    .ok()
                    .map(|k| k.trim().to_string())
                    .filter(|k| !k.is_empty())
            },
        )
        .await
    }

    /// A client of the scheduler at `addr`, with the cluster's admin key.
    pub(crate) async fn connect(&self, addr: &str) -> Client {
        connect(addr, &self.admin_key().await).await
    }

    /// A scheduler `id` listening on `listen` (the cluster's store holds its event files).
    pub(crate) fn scheduler(&self, id: &str, listen: &str) -> Proc {
        self.spawn("scheduler", id, listen, &["--store", &self.store_url])
    }

    /// An executor `id` with one slot on a free port; returns it and its address.
    pub(crate) fn executor(&self, id: &str) -> (Proc, String) {
        let listen = format!("127.0.0.1:{}", free_port());
        let extra = ["--store", &self.store_url, "--cpu-slots", "1"];
        (self.spawn("executor", id, &listen, &extra), listen)
    }
}

/// A data-parallel MLP job on the responses at `data`, its feature stage in SQL on the
/// cluster (six shards, a modulo split on the row index, as the bank-marketing example
/// does), small and quick for a debug build: `workers` workers, `train` lines replacing the
/// `[train]` defaults of the same key, and `search` appended.
pub(crate) fn data_parallel_spec(
    dir: &Path,
    name: &str,
    data: &Path,
    workers: u32,
    train: &str,
    search: &str,
) -> JobSpec {
    let mut settings: Vec<(String, String)> = [
        ("workers", workers.to_string().as_str()),
        ("epochs", "6"),
        ("batch_size", "512"),
        ("learning_rate", "0.003"),
        ("weight_decay", "0.0001"),
        ("patience", "4"),
        ("seed", "1"),
        ("device", "\"cpu\""),
        ("checkpoint_steps", "50"),
        ("checkpoint_secs", "30"),
        ("step_timeout_secs", "10"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for line in train.lines() {
        let (key, value) = line.split_once(" = ").unwrap();
        match settings.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value.to_string(),
            None => settings.push((key.to_string(), value.to_string())),
        }
    }
    let train: String = settings
        .iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect();
    let text = format!(
        r#"name = "{name}"
[[features.sources]]
name = "responses"
path = "{data}"
row_index = "row"

[features]
sql = "SELECT * EXCLUDE (customer_id) FROM responses"
shards = 6

[features.split]
method = "modulo"
key = "row"
every = 5
test_remainder = 4
validation_remainder = 3

[data]
label = "responded"
positive = "yes"
exclude = ["row"]

[model]
type = "mlp"
encoding = "one_hot"
hidden = [32]
max_embedding = 8
ensemble = 1

[train]
{train}
[resources]
cpus = 1
memory_mb = 1024
{search}"#,
        data = data.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    JobSpec::from_file(&path).unwrap()
}

/// Deploy `version` of model `name` under `alias`, to `percent` of traffic when given.
pub(crate) async fn deploy(
    client: &Client,
    name: &str,
    version: u64,
    alias: &str,
    percent: Option<u32>,
) {
    client
        .deploy(halyard_core::proto::DeployRequest {
            name: name.into(),
            change: Some(halyard_core::proto::deploy_request::Change::Deploy(
                halyard_core::proto::DeployVersion {
                    version,
                    alias: alias.into(),
                    percent,
                },
            )),
        })
        .await
        .unwrap();
}

/// Whether a program of `tools` does not run (`TOOL --version`); then says so in one line,
/// naming the Debian `packages` that `.ci/run` installs: the test skips.
pub(crate) fn missing(tools: &[&str], packages: &str) -> bool {
    let absent: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| {
            Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .collect();
    if !absent.is_empty() {
        eprintln!(
            "skipped: {} not installed (apt-get install {packages}; .ci/run does)",
            absent.join(" and ")
        );
    }
    !absent.is_empty()
}

/// Train `spec` to success and deploy the version it published, `version`, as production.
pub(crate) async fn train_and_deploy(client: &Client, spec: &JobSpec, version: u64) {
    let job = client.submit(spec).await.unwrap();
    let done = wait_done(client, &job.id, Duration::from_secs(180)).await;
    assert_eq!(done.state, "succeeded", "{done:?}");
    deploy(client, &spec.name, version, "production", None).await;
}

/// The Python the tests run (`HALYARD_PYTHON`, which `.ci/run` points at its virtual
/// environment, else `python3`) when it can import `modules` (`import` syntax); else the
/// one line saying why the test is skipped and what installs them, and `None`.
pub(crate) fn python_with(modules: &str, install: &str) -> Option<String> {
    let python = std::env::var("HALYARD_PYTHON").unwrap_or_else(|_| "python3".into());
    let importable = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !importable {
        eprintln!(
            "skipped: {python} cannot import {modules} ({install}; .ci/run installs it in a virtual environment)"
        );
        return None;
    }
    Some(python)
}

/// An etcd on `client`/`peer` ports keeping its data in `dir/etcd`, logging to `dir/etcd.log`.
pub(crate) fn start_etcd(dir: &Path, client: u16, peer: u16) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("etcd.log"))
        .unwrap();
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    Command::new("etcd")
        .args(["--name", "restarted", "--data-dir"])
        .arg(dir.join("etcd"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("restarted={peer_url}")])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("etcd starts")
}

/// A private etcd (a test that kills it cannot share `.ci/run`'s) that is killed when
/// dropped.
pub(crate) struct Etcd(pub Child);

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The S3 server (in-process, signatures checked) on `addr`, serving `root` with one
/// credential; aborting the task is an outage (listener and connections closed), and
/// calling this again on the same address ends it.
pub(crate) async fn s3_on(
    addr: std::net::SocketAddr,
    root: &Path,
    access_key: &str,
    secret_key: &str,
) -> tokio::task::JoinHandle<()> {
    let listener = wait_for("the S3 port", Duration::from_secs(10), || async {
        tokio::net::TcpListener::bind(addr).await.ok()
    })
    .await;
    let (root, ak, sk) = (
        root.to_path_buf(),
        access_key.to_string(),
        secret_key.to_string(),
    );
    tokio::spawn(async move {
        let _ = halyard_s3_server::serve(listener, &root, &ak, &sk).await;
    })
}

/// A private etcd in `dir` (see [`start_etcd`]) once it answers: it, its client endpoint,
/// and its two ports (to start it again on the same data).
pub(crate) async fn private_etcd(dir: &Path) -> (Etcd, String, u16, u16) {
    let (client_port, peer_port) = (free_port(), free_port());
    let etcd = Etcd(start_etcd(dir, client_port, peer_port));
    let endpoint = format!("127.0.0.1:{client_port}");
    wait_for("etcd to answer", Duration::from_secs(20), || async {
        halyard_core::kv::EtcdKv::connect(std::slice::from_ref(&endpoint), &Default::default())
            .await
            .ok()
    })
    .await;
    (etcd, endpoint, client_port, peer_port)
}

/// The `:predict` body of the first record of the responses CSV at `data`, read with
/// `spec`'s `[data]` rules (the label left out).
pub(crate) fn first_record_body(spec: &JobSpec, data: &Path) -> String {
    let bytes = bytes::Bytes::from(std::fs::read(data).unwrap());
    let table = halyard_core::data::read_table(&bytes, &spec.data, "responses.csv").unwrap();
    let rows = halyard_cli::load::records(&table.batches, &["responded"]).unwrap();
    serde_json::json!({ "record": rows[0] }).to_string()
}

/// The status of a `:predict` of `body` for `model` at `at` (`HOST:PORT`); 0 when nothing
/// answered within 5 s.
pub(crate) async fn predict_status(
    http: &reqwest::Client,
    at: &str,
    model: &str,
    body: &str,
) -> u16 {
    http.post(format!("http://{at}/v1/models/{model}:predict"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// The answer of `model`'s `:predict` to `body`, once a node serves it.
pub(crate) async fn predict_when_served(
    cluster: &halyard::Standalone,
    model: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let http = http_client(&cluster.admin_key);
    let url = format!(
        "http://{}/v1/models/{model}:predict",
        cluster.scheduler.addr
    );
    let body = body.to_string();
    wait_for(
        &format!("{model} to serve"),
        Duration::from_secs(30),
        || {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            async move {
                let r = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .ok()?;
                r.status().is_success().then_some(())?;
                serde_json::from_slice(&r.bytes().await.ok()?).ok()
            }
        },
    )
    .await
}
