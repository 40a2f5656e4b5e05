//! The chaos suite (issue 21): a whole cluster — a private etcd, two schedulers, three
//! executors, the S3 server holding the store — runs a stream of jobs (plain and
//! data-parallel with a feature stage) and a steady prediction load with feedback, while a
//! random, seeded schedule of faults hits it: kill -9 and restart of an executor or a
//! scheduler, SIGSTOP and SIGCONT of an executor, a kill -9 and restart of etcd, an outage
//! of the S3 server, an executor's disk full (its SQL work folder past its budget for 10
//! s), damaged checkpoints (an executor killed once a data-parallel job submitted for it
//! runs with a checkpoint, then a byte of every checkpoint in the store changed: the group
//! resumes from a damaged one when the executor was one of its workers); each of the last two
//! submits a job of its own that meets it; one time in four two of them at once (on
//! different processes, never both schedulers). Then a checker verifies the invariants:
//!
//! 1. every job ended exactly once: succeeded with exactly one registered version
//!    published by it, whose artifact is whole in the store and whose metrics are the
//!    job's; or failed with a message and no version;
//! 2. no version number was issued to two jobs;
//! 3. every acknowledged feedback event is counted once (at least the acknowledged, at
//!    most the sent);
//! 4. no prediction failed at both schedulers' doors while a replica was alive (there is
//!    always one: two executors at most are faulted at a time).
//!
//! `HALYARD_CHAOS_SEED=N` replays a schedule; `HALYARD_CHAOS=large` runs the large scale
//! (more jobs and faults); `HALYARD_CHAOS_FAULTS=FullDisk,DamagedCheckpoints` draws only
//! those kinds. On a violation the test prints the seed, the schedule and every
//! violation.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const AK: &str = "chaos-access-key";
const SK: &str = "chaos-secret-key-0123456789";

/// splitmix64: a seeded schedule, replayable from the seed alone.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillExecutor(usize),
    KillScheduler(usize),
    StopExecutor(usize),
    EtcdRestart,
    S3Outage,
    /// The executor's SQL work folder past its disk budget.
    FullDisk(usize),
    /// A byte of every checkpoint in the store changed, then the executor killed.
    DamagedCheckpoints(usize),
}

/// Each kind's name, as `HALYARD_CHAOS_FAULTS` lists them.
const KINDS: [&str; 7] = [
    "KillExecutor",
    "KillScheduler",
    "StopExecutor",
    "EtcdRestart",
    "S3Outage",
    "FullDisk",
    "DamagedCheckpoints",
];

/// The kind named `name` on the process `rng` picks.
fn fault_of(name: &str, rng: &mut Rng) -> Fault {
    match name {
        "KillExecutor" => Fault::KillExecutor(rng.below(3) as usize),
        "KillScheduler" => Fault::KillScheduler(rng.below(2) as usize),
        "StopExecutor" => Fault::StopExecutor(rng.below(3) as usize),
        "EtcdRestart" => Fault::EtcdRestart,
        "S3Outage" => Fault::S3Outage,
        "FullDisk" => Fault::FullDisk(rng.below(3) as usize),
        "DamagedCheckpoints" => Fault::DamagedCheckpoints(rng.below(3) as usize),
        other => panic!("HALYARD_CHAOS_FAULTS: no fault kind {other:?}; the kinds: {KINDS:?}"),
    }
}

fn draw(rng: &mut Rng, kinds: &[String]) -> Fault {
    let kind = &kinds[rng.below(kinds.len() as u64) as usize];
    fault_of(kind, rng)
}

/// The process a fault hits.
fn target(f: Fault) -> String {
    match f {
        Fault::KillExecutor(i)
        | Fault::StopExecutor(i)
        | Fault::FullDisk(i)
        | Fault::DamagedCheckpoints(i) => format!("exec-{i}"),
        Fault::KillScheduler(i) => format!("sched-{i}"),
        Fault::EtcdRestart => "etcd".into(),
        Fault::S3Outage => "s3".into(),
    }
}

/// One fault, or one time in four two at once: on different processes, and never both
/// schedulers (the doors the checker predicts at).
fn draw_faults(rng: &mut Rng, kinds: &[String]) -> Vec<Fault> {
    let first = draw(rng, kinds);
    if rng.below(4) != 0 {
        return vec![first];
    }
    // Twenty tries for a second fault on another process (one kind alone may have one).
    for _ in 0..20 {
        let second = draw(rng, kinds);
        let both_doors = matches!(
            (first, second),
            (Fault::KillScheduler(_), Fault::KillScheduler(_))
        );
        if target(second) != target(first) && !both_doors {
            return vec![first, second];
        }
    }
    vec![first]
}

/// Each executor's disk budget, MiB (`--disk-budget-mb`).
const DISK_BUDGET_MB: u64 = 256;

/// The SQL work folder (`halyard-sql-*` in `TMPDIR`) whose owner is process `pid`.
fn work_folder(pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("halyard-sql-"))
                && std::fs::read_to_string(p.join("owner"))
                    .is_ok_and(|o| o.split_whitespace().next() == Some(&pid.to_string()))
        })
}

/// The file of job `id`'s checkpoint in the S3 server's folder (bucket `models`, the
/// store's root `halyard`).
fn checkpoint_file(s3_root: &std::path::Path, id: &str) -> std::path::PathBuf {
    s3_root
        .join("models/halyard")
        .join(halyard_core::store::checkpoint_path(id))
}

/// Change a byte in the middle of every job's checkpoint in the store; how many.
fn damage_checkpoints(s3_root: &std::path::Path) -> usize {
    let jobs = s3_root
        .join("models/halyard")
        .join(halyard_core::store::JOBS_DIR);
    let mut damaged = 0;
    for job in std::fs::read_dir(jobs).into_iter().flatten().flatten() {
        let file = checkpoint_file(s3_root, &job.file_name().to_string_lossy());
        if let Ok(mut bytes) = std::fs::read(&file)
            && !bytes.is_empty()
        {
            let at = bytes.len() / 2;
            bytes[at] ^= 0x5a;
            if std::fs::write(&file, &bytes).is_ok() {
                damaged += 1;
            }
        }
    }
    damaged
}

/// The executors of job `id`'s workers once it runs with a checkpoint in the store,
/// awaited up to 60 s.
async fn checkpointed_group(
    doors: &[String],
    key: &str,
    s3_root: &std::path::Path,
    id: &str,
) -> Option<Vec<String>> {
    let checkpoint = checkpoint_file(s3_root, id);
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        for door in doors {
            let Ok(c) = halyard_client::Client::connect_with_key(door, Some(key)).await else {
                continue;
            };
            if let Ok(j) = c.job(id).await
                && j.state == "running"
                && !j.workers.is_empty()
                && checkpoint.exists()
            {
                return Some(j.workers);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A freeze of the whole host (a paused VM): the wall clock jumps while the monotonic
/// clock, which this test's times are read from, stands still. Every lease in etcd
/// expires at once after one, executors' included, so for a moment no replica is alive
/// (invariant 4 holds only while one is).
struct HostFreeze {
    started: Instant,
    wall: std::time::SystemTime,
    skew_ms: i128,
}

impl HostFreeze {
    /// A jump of the wall clock past the monotonic one this long is a freeze.
    const JUMP_MS: i128 = 5_000;
    /// Failures this long after a freeze was seen (or up to a second before) are its.
    const AFTER_MS: u128 = 30_000;

    fn new(started: Instant) -> HostFreeze {
        HostFreeze {
            started,
            wall: std::time::SystemTime::now(),
            skew_ms: 0,
        }
    }

    fn skew(&self) -> i128 {
        let wall = self.wall.elapsed().unwrap_or_default().as_millis() as i128;
        wall - self.started.elapsed().as_millis() as i128
    }

    /// A freeze since the last call: (ms after the start, s the wall clock jumped).
    fn jumped(&mut self) -> Option<(u128, u128)> {
        let skew = self.skew();
        let jump = skew - self.skew_ms;
        self.skew_ms = skew;
        (jump > Self::JUMP_MS).then(|| (self.started.elapsed().as_millis(), (jump / 1000) as u128))
    }

    /// Whether a prediction failed at `ms` after the start follows a freeze.
    fn excuses(freezes: &[(u128, u128)], ms: u128) -> bool {
        freezes
            .iter()
            .any(|&(at, _)| at <= ms + 1_000 && ms <= at + Self::AFTER_MS)
    }
}

fn signal(p: &Proc, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &p.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {}", p.name);
}

/// A prediction, then its outcome, at the first door that answers.
async fn predict_and_feed(
    http: &reqwest::Client,
    doors: &[String],
    body: &str,
    key: &str,
    converted: bool,
) -> (bool, Option<bool>) {
    let mut predicted = false;
    for door in doors {
        if predict_status(http, door, "steady", body).await == 200 {
            predicted = true;
            break;
        }
    }
    if !predicted {
        return (false, None);
    }
    for door in doors {
        let r = http
            .post(format!("http://{door}/v1/models/steady:feedback"))
            .header("content-type", "application/json")
            .body(serde_json::json!({"version": 1, "key": key, "converted": converted}).to_string())
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if r.is_ok_and(|r| r.status().is_success()) {
            return (true, Some(true));
        }
    }
    (true, Some(false))
}

/// Submit `spec` at the first door that takes it (a scheduler may be restarting, etcd
/// away); its job id.
async fn submit_at_either(
    doors: &[String],
    key: &str,
    spec: &halyard_core::spec::JobSpec,
) -> String {
    wait_for("a submission", Duration::from_secs(120), || async {
        for door in doors {
            if let Ok(c) = halyard_client::Client::connect_with_key(door, Some(key)).await
                && let Ok(j) = c.submit(spec).await
            {
                return Some(j.id);
            }
        }
        None
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seeded_schedule_of_faults_breaks_no_invariant() {
    if missing(&["etcd"], "etcd-server") {
        return;
    }
    let large = std::env::var("HALYARD_CHAOS").is_ok_and(|v| v == "large");
    let (jobs_n, faults_n): (usize, usize) = if large { (16, 24) } else { (4, 6) };
    let seed: u64 = std::env::var("HALYARD_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!(
        "chaos seed {seed} ({} scale): HALYARD_CHAOS_SEED={seed} replays it",
        if large { "large" } else { "small" }
    );
    let mut rng = Rng(seed);
    let kinds: Vec<String> = match std::env::var("HALYARD_CHAOS_FAULTS") {
        Ok(list) => list.split(',').map(|k| k.trim().to_string()).collect(),
        Err(_) => KINDS.map(String::from).to_vec(),
    };
    for k in &kinds {
        fault_of(k, &mut Rng(0));
    }

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (mut etcd, endpoint, client_port, peer_port) = private_etcd(dir).await;
    let s3_root = dir.join("s3");
    std::fs::create_dir_all(s3_root.join("models")).unwrap();
    let s3_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut s3 = s3_on(s3_addr, &s3_root, AK, SK).await;
    let mut cl = EtcdCluster::new(dir, "chaos");
    cl.etcd = endpoint;
    cl.store_url = "s3://models/halyard".into();
    cl.flags = [
        "--s3-endpoint",
        &format!("http://{s3_addr}"),
        "--s3-access-key-id",
        AK,
        "--s3-secret-access-key",
        SK,
        "--s3-region",
        "us-east-1",
        "--s3-retry-secs",
        "60",
        "--disk-budget-mb",
        &DISK_BUDGET_MB.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let doors: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let mut schedulers: Vec<Proc> = doors
        .iter()
        .enumerate()
        .map(|(i, d)| cl.scheduler(&format!("sched-{i}"), d))
        .collect();
    let mut executors: Vec<Proc> = (0..3)
        .map(|i| cl.executor(&format!("exec-{i}")).0)
        .collect();
    let client = cl.connect(&doors[0]).await;
    wait_for("three executors", Duration::from_secs(60), || async {
        (client.cluster().await.ok()?.executors.len() == 3).then_some(())
    })
    .await;
    let data = halyard_cli::datagen::generate(&dir.join("data"), 1500, 3).unwrap();
    let steady = spec(dir, "steady", &data.responses, 2, 256);
    train_and_deploy(&client, &steady, 1).await;

    // The steady load: a prediction and its outcome, at the first door that answers.
    let key = cl.admin_key().await;
    let http = http_client(&key);
    let record = first_record_body(&steady, &data.responses);
    wait_for("the model to answer", Duration::from_secs(60), || async {
        predict_and_feed(&http, &doors, &record, "warm-up", false)
            .await
            .0
            .then_some(())
    })
    .await;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(0usize));
    let sent = Arc::new(Mutex::new(1usize));
    let failures = Arc::new(Mutex::new(Vec::<u128>::new()));
    // Host freezes seen by the load: (ms after the start, s the wall clock jumped).
    let freezes = Arc::new(Mutex::new(Vec::<(u128, u128)>::new()));
    let load = {
        let (http, doors, record) = (http.clone(), doors.clone(), record.clone());
        let (stop, acked, sent, failures, freezes) = (
            stop.clone(),
            acked.clone(),
            sent.clone(),
            failures.clone(),
            freezes.clone(),
        );
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut skew = HostFreeze::new(started);
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = format!("c{n}");
                let (predicted, fed) =
                    predict_and_feed(&http, &doors, &record, &key, n.is_multiple_of(3)).await;
                if let Some(jump) = skew.jumped() {
                    freezes.lock().unwrap().push(jump);
                }
                if !predicted {
                    failures.lock().unwrap().push(started.elapsed().as_millis());
                }
                if fed.is_some() {
                    *sent.lock().unwrap() += 1;
                }
                if fed == Some(true) {
                    *acked.lock().unwrap() += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Jobs through the schedule: every other one data-parallel with a feature stage.
    let mut ids: Vec<(String, String)> = Vec::new();
    let mut schedule: Vec<String> = Vec::new();
    // Per fault kind, ms from the fault to full service again.
    let mut back: BTreeMap<String, Vec<u128>> = BTreeMap::new();
    // A data-parallel job with a feature stage, checkpointing every 2 steps.
    let data_parallel = |name: &str, epochs: u32| {
        let train = format!(
            "epochs = {epochs}\ncheckpoint_steps = 2\ncheckpoint_secs = 0\nstep_timeout_secs = 10"
        );
        data_parallel_spec(dir, name, &data.responses, 2, &train, "")
    };
    let submit = |i: usize| {
        let name = format!("chaos-{i}");
        if i.is_multiple_of(2) {
            (name.clone(), spec(dir, &name, &data.responses, 2, 256))
        } else {
            (name.clone(), data_parallel(&name, 2))
        }
    };
    let every = faults_n.div_ceil(jobs_n).max(1);
    for f in 0..faults_n {
        if f % every == 0 && ids.len() < jobs_n {
            let (name, s) = submit(ids.len());
            ids.push((name, submit_at_either(&doors, &key, &s).await));
        }
        tokio::time::sleep(Duration::from_millis(1500 + rng.below(2500))).await;
        let faults = draw_faults(&mut rng, &kinds);
        let at = started.elapsed().as_millis();
        let fault_ms = halyard_core::records::now_ms();
        schedule.push(format!("{at} ms: {faults:?}"));
        // Every fault of the draw strikes, then the longest wait, then every one is mended.
        let mut wait = Duration::ZERO;
        let mut ballast: Vec<std::path::PathBuf> = Vec::new();
        // The kinds that submit a job strike first, while the doors and etcd answer.
        let mut striking = faults.clone();
        striking.sort_by_key(|f| !matches!(f, Fault::FullDisk(_) | Fault::DamagedCheckpoints(_)));
        for fault in &striking {
            match *fault {
                Fault::KillExecutor(i) => executors[i].kill(),
                Fault::FullDisk(i) => {
                    // A sparse file as large as the budget: the folder holds the budget.
                    let folder = work_folder(executors[i].child.id())
                        .unwrap_or_else(|| panic!("exec-{i} has no sql work folder"));
                    let file = folder.join("chaos-ballast");
                    std::fs::File::create(&file)
                        .and_then(|f| f.set_len(DISK_BUDGET_MB << 20))
                        .unwrap();
                    ballast.push(file);
                    // A job whose feature stage meets the full disk.
                    let name = format!("chaos-{}", ids.len());
                    let id = submit_at_either(&doors, &key, &data_parallel(&name, 2)).await;
                    ids.push((name, id));
                    wait = wait.max(Duration::from_secs(10));
                }
                Fault::DamagedCheckpoints(i) => {
                    // A longer data-parallel job, struck once it runs with a checkpoint.
                    let name = format!("chaos-{}", ids.len());
                    let id = submit_at_either(&doors, &key, &data_parallel(&name, 30)).await;
                    ids.push((name, id.clone()));
                    let workers = checkpointed_group(&doors, &key, &s3_root, &id).await;
                    // Killed first: a group broken can write no newer checkpoint over
                    // the damaged one.
                    executors[i].kill();
                    let n = damage_checkpoints(&s3_root);
                    let exec = format!("exec-{i}");
                    let struck = match workers {
                        Some(w) if w.contains(&exec) => format!("a worker of {id}"),
                        Some(_) => format!("not a worker of {id}"),
                        None => format!("{id} not running with a checkpoint within 60 s"),
                    };
                    if let Some(line) = schedule.last_mut() {
                        line.push_str(&format!(
                            " ({n} checkpoints damaged, {exec} killed, {struck})"
                        ));
                    }
                }
                Fault::KillScheduler(i) => schedulers[i].kill(),
                Fault::StopExecutor(i) => {
                    signal(&executors[i], "-STOP");
                    wait = wait.max(Duration::from_secs(3));
                }
                Fault::EtcdRestart => {
                    etcd.0.kill().unwrap();
                    etcd.0.wait().unwrap();
                    wait = wait.max(Duration::from_millis(1000 + rng.below(2000)));
                }
                Fault::S3Outage => {
                    s3.abort();
                    let _ = (&mut s3).await;
                    wait = wait.max(Duration::from_secs(3));
                }
            }
        }
        tokio::time::sleep(wait).await;
        // etcd and the store first: a node started while etcd is down would wait for it
        // (`etcd_wait_secs`), and the fault's recovery time would count that wait.
        let mut mending = faults.clone();
        mending.sort_by_key(|f| !matches!(f, Fault::EtcdRestart | Fault::S3Outage));
        for file in &ballast {
            let _ = std::fs::remove_file(file);
        }
        for fault in &mending {
            match *fault {
                Fault::KillExecutor(i) | Fault::DamagedCheckpoints(i) => {
                    executors[i] = cl.executor(&format!("exec-{i}")).0;
                }
                Fault::FullDisk(_) => {}
                Fault::KillScheduler(i) => {
                    schedulers[i] = cl.scheduler(&format!("sched-{i}"), &doors[i]);
                }
                Fault::StopExecutor(i) => signal(&executors[i], "-CONT"),
                Fault::EtcdRestart => {
                    etcd = Etcd(start_etcd(dir, client_port, peer_port));
                    let endpoint = format!("127.0.0.1:{client_port}");
                    wait_for("etcd to answer", Duration::from_secs(20), || async {
                        let access = Default::default();
                        halyard_core::kv::EtcdKv::connect(std::slice::from_ref(&endpoint), &access)
                            .await
                            .ok()
                    })
                    .await;
                }
                Fault::S3Outage => s3 = s3_on(s3_addr, &s3_root, AK, SK).await,
            }
        }
        // Full service again: both doors answer, with a leader and three live executors, a
        // killed executor's successor registered.
        let restarted: Vec<String> = faults
            .iter()
            .filter_map(|f| match f {
                Fault::KillExecutor(i) | Fault::DamagedCheckpoints(i) => Some(format!("exec-{i}")),
                _ => None,
            })
            .collect();
        let why = Mutex::new(String::new());
        let full = wait_for(
            "full service after a fault",
            Duration::from_secs(300),
            || async {
                for door in &doors {
                    let Ok(c) = halyard_client::Client::connect_with_key(door, Some(&key)).await
                    else {
                        *why.lock().unwrap() = format!("{door} does not answer");
                        return None;
                    };
                    let status = match c.cluster().await {
                        Ok(s) => s,
                        Err(e) => {
                            *why.lock().unwrap() = format!("{door}: {e}");
                            return None;
                        }
                    };
                    let fresh = restarted.iter().all(|id| {
                        status
                            .executors
                            .iter()
                            .any(|e| &e.id == id && e.started_ms >= fault_ms)
                    });
                    if status.leader.is_empty() || status.executors.len() != 3 || !fresh {
                        *why.lock().unwrap() = format!(
                            "{door}: leader {:?}, executors {:?}",
                            status.leader,
                            status
                                .executors
                                .iter()
                                .map(|e| (&e.id, e.started_ms))
                                .collect::<Vec<_>>()
                        );
                        return None;
                    }
                }
                Some(started.elapsed().as_millis() - at)
            },
        )
        .await;
        if full > 20_000 {
            println!(
                "{faults:?} at {at} ms: full service only after {full} ms; the last state short of it: {}",
                why.lock().unwrap()
            );
        }
        // Per kind, or per pair of kinds ("EtcdRestart+KillExecutor").
        let mut kinds: Vec<String> = faults
            .iter()
            .map(|f| {
                format!("{f:?}")
                    .split('(')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect();
        kinds.sort();
        back.entry(kinds.join("+")).or_default().push(full);
    }
    while ids.len() < jobs_n {
        let (name, s) = submit(ids.len());
        ids.push((name, submit_at_either(&doors, &key, &s).await));
    }

    // The checker.
    let client = wait_for("a scheduler", Duration::from_secs(60), || async {
        let c = halyard_client::Client::connect_with_key(&doors[0], Some(&key))
            .await
            .ok()?;
        c.cluster().await.ok()?;
        Some(c)
    })
    .await;
    let mut violations: Vec<String> = Vec::new();
    let mut jobs_by_version: BTreeMap<(String, u64), String> = BTreeMap::new();
    // What the jobs' logs say of the faults: resumptions, damaged checkpoints passed over,
    // tasks refused by a full disk.
    let mut told: BTreeMap<&str, usize> = BTreeMap::new();
    let mut failed = 0usize;
    for (name, id) in &ids {
        let done = wait_done(&client, id, Duration::from_secs(600)).await;
        for line in client.logs(id).await.unwrap_or_default() {
            for (what, text) in [
                ("resumed from a checkpoint", "resumed from the checkpoint"),
                ("damaged checkpoints passed over", "is damaged"),
                (
                    "started over for want of an intact checkpoint",
                    "starts from the beginning",
                ),
                ("lines naming the disk budget", "disk budget"),
                (
                    "versions reported from an earlier run",
                    "registered by an earlier run",
                ),
            ] {
                if line.message.contains(text) {
                    *told.entry(what).or_default() += 1;
                }
            }
        }
        let model = client.model(name).await.ok();
        let versions: Vec<_> = model
            .iter()
            .flat_map(|m| m.versions.iter())
            .filter(|v| &v.job_id == id)
            .cloned()
            .collect();
        match done.state.as_str() {
            "succeeded" => {
                if versions.len() != 1 {
                    violations.push(format!(
                        "job {id} succeeded with {} versions",
                        versions.len()
                    ));
                }
                for v in &versions {
                    let manifest = s3_root.join(format!(
                        "models/halyard/models/{name}/{}/manifest.json",
                        v.version
                    ));
                    if !manifest.exists() {
                        violations
                            .push(format!("job {id}'s version {} has no manifest", v.version));
                    }
                    if v.metrics != done.metrics {
                        violations.push(format!(
                            "job {id}'s version {} has other metrics than the job",
                            v.version
                        ));
                    }
                    if let Some(other) =
                        jobs_by_version.insert((name.clone(), v.version), id.clone())
                    {
                        violations.push(format!(
                            "version {name}@{} issued to {other} and {id}",
                            v.version
                        ));
                    }
                }
            }
            "failed" => {
                if !versions.is_empty() || done.error.is_empty() {
                    violations.push(format!(
                        "job {id} failed with {} versions and error {:?}",
                        versions.len(),
                        done.error
                    ));
                }
                println!("job {id} failed: {}", done.error);
                failed += 1;
            }
            other => violations.push(format!("job {id} ended {other}")),
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (acked, sent) = (*acked.lock().unwrap(), *sent.lock().unwrap());
    let report = wait_for("the experiment report", Duration::from_secs(60), || async {
        client.experiment("steady").await.ok()
    })
    .await;
    // Every node publishes its counts once a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = client.experiment("steady").await.unwrap_or(report);
    let counted = report
        .variants
        .iter()
        .find(|v| v.version == 1)
        .map_or(0, |v| v.trials as usize);
    if counted < acked || counted > sent {
        violations.push(format!(
            "{counted} outcomes counted, {acked} acknowledged, {sent} sent"
        ));
    }
    let freezes = freezes.lock().unwrap().clone();
    let (excused, failures): (Vec<u128>, Vec<u128>) = failures
        .lock()
        .unwrap()
        .iter()
        .partition(|&&ms| HostFreeze::excuses(&freezes, ms));
    if !excused.is_empty() {
        println!(
            "{} predictions failed at both doors after the host was frozen (ms after the start {excused:?}; freezes at ms, s the wall clock jumped: {freezes:?}): every lease expired at once, so no replica was alive; not counted",
            excused.len()
        );
    }
    if !failures.is_empty() {
        violations.push(format!(
            "{} predictions failed at both doors (ms after the start): {failures:?}",
            failures.len()
        ));
    }
    let succeeded = jobs_by_version.len();
    for (kind, times) in &mut back {
        times.sort_unstable();
        println!(
            "{kind}: {} times, full service again after median {} ms, max {} ms",
            times.len(),
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
    println!("the jobs' logs: {told:?}");
    println!(
        "chaos seed {seed}: {} faults, {} jobs ({succeeded} succeeded), {acked} outcomes acknowledged of {sent} sent and {counted} counted, {} predictions failed\nschedule:\n{}",
        schedule.len(),
        ids.len(),
        failures.len(),
        schedule.join("\n")
    );
    // A failed job or a violation keeps every process's log (each restart appended).
    if failed > 0 || !violations.is_empty() {
        let kept = std::env::temp_dir().join(format!("halyard-chaos-{seed}"));
        std::fs::create_dir_all(&kept).unwrap();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let _ = std::fs::copy(&path, kept.join(entry.file_name()));
            }
        }
        println!("the processes' logs are kept in {}", kept.display());
    }
    assert!(
        violations.is_empty(),
        "chaos seed {seed} (HALYARD_CHAOS_SEED={seed} replays it) broke invariants:\n{}\nschedule:\n{}",
        violations.join("\n"),
        schedule.join("\n")
    );
    drop(etcd);
}
