//! `halyard doctor`: the things that go wrong on first contact, checked one by one, each
//! with a line that says what was found and, when it is wrong, what to do: the scheduler
//! (and, when it does not answer on this machine, whether its port is free or taken), the
//! key, etcd and the object store when given, the data directory and its disk, GPU support.

use std::path::Path;
use std::time::Duration;

use halyard_client::Client;

use crate::commands::out;
use crate::keys::{Connection, KeySource, discover_with_source, local_data_dir};
use crate::{CliError, Result};

/// Below this much free space the data directory is a warning.
const LOW_DISK_BYTES: u64 = 2 << 30;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Ok,
    /// Nothing to check: the setting it needs was not given.
    Skip,
    Warn,
    Fail,
}

/// What `halyard doctor` checks beyond the scheduler: the services a multi-process cluster
/// uses, named by the same variables its nodes read.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Services {
    /// etcd endpoints (HOST:PORT, comma-separated): reachable, and the server's version
    /// (plaintext, without a user) [default: not checked; a standalone needs none]
    #[arg(long, env = "HALYARD_ETCD", value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The object store (`file:///dir` or `s3://bucket/prefix`, S3 credentials from
    /// `AWS_*`): a probe object is written, read back and deleted [default: not checked; a
    /// standalone's store is in its data directory]
    #[arg(long, env = "HALYARD_STORE")]
    pub store: Option<String>,
}

/// One check's line.
#[derive(Debug, Clone)]
struct Check {
    verdict: Verdict,
    what: &'static str,
    line: String,
}

fn check(verdict: Verdict, what: &'static str, line: impl Into<String>) -> Check {
    Check {
        verdict,
        what,
        line: line.into(),
    }
}

/// Where the scheduler address came from.
fn address_source(conn: &Connection) -> &'static str {
    match std::env::var("HALYARD_SCHEDULER") {
        Ok(v) if v == conn.scheduler => "from HALYARD_SCHEDULER",
        _ if conn.scheduler == halyard_client::DEFAULT_SCHEDULER => "the default",
        _ => "from --scheduler",
    }
}

/// The scheduler and the key: reachable, and the key accepted.
async fn cluster(conn: &Connection) -> Vec<Check> {
    let source = address_source(conn);
    let addr = &conn.scheduler;
    let found = discover_with_source(addr, conn.key.clone());
    let mut checks = vec![match &found {
        Some((_, KeySource::Given)) if std::env::var_os("HALYARD_KEY").is_some() => {
            check(Verdict::Ok, "key", "found in HALYARD_KEY")
        }
        Some((_, KeySource::Given)) => check(Verdict::Ok, "key", "found in --key"),
        Some((_, KeySource::File(f))) => check(
            Verdict::Ok,
            "key",
            format!("found in the key file {}", f.display()),
        ),
        None => check(
            Verdict::Warn,
            "key",
            format!(
                "none: pass --key or HALYARD_KEY (for a scheduler on this machine, the admin key file {} is read when present)",
                local_data_dir()
                    .join(halyard_core::auth::ADMIN_KEY_FILE)
                    .display()
            ),
        ),
    }];
    let tls = match &conn.tls_ca {
        Some(ca) => match halyard_core::tls::client_trusting(ca) {
            Ok(t) => Some(t),
            Err(e) => {
                checks.push(check(
                    Verdict::Fail,
                    "tls",
                    format!("--tls-ca {}: {e}", ca.display()),
                ));
                return checks;
            }
        },
        None => None,
    };
    let token = found.map(|(k, _)| k);
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let client = Client::connect_secure(addr, token.as_deref(), tls).await?;
        client.cluster().await
    })
    .await;
    checks.push(match answer {
        Ok(Ok(c)) => check(
            Verdict::Ok,
            "scheduler",
            format!(
                "{addr} ({source}) answers: leader {}, {} executor(s)",
                if c.leader.is_empty() { "(none yet)" } else { &c.leader },
                c.executors.len()
            ),
        ),
        Ok(Err(e)) if e.to_string().contains("key") || e.to_string().contains("unauthenticated") => {
            check(
                Verdict::Fail,
                "scheduler",
                format!("{addr} ({source}) answers but refuses the key: {e}"),
            )
        }
        Ok(Err(e)) => check(
            Verdict::Fail,
            "scheduler",
            format!("{addr} ({source}): {e}"),
        ),
        Err(_) => check(
            Verdict::Fail,
            "scheduler",
            format!("{addr} ({source}) did not answer within 5 s: is it a Halyard scheduler, and is the address right?"),
        ),
    });
    checks
}

/// A scheduler address that did not answer: whether anything listens there (a local
/// address only).
fn port(addr: &str) -> Option<Check> {
    if !halyard_core::auth::is_loopback(addr) {
        return None;
    }
    Some(match std::net::TcpListener::bind(addr) {
        Ok(_) => check(
            Verdict::Warn,
            "port",
            format!(
                "nothing listens on {addr}: start `halyard standalone` (it listens on 127.0.0.1:7070 by default) or pass the scheduler's address"
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => check(
            Verdict::Fail,
            "port",
            format!(
                "{addr} is taken by a program that is not a Halyard scheduler answering this key: stop it, or give `halyard standalone --listen` another port"
            ),
        ),
        Err(e) => check(Verdict::Warn, "port", format!("{addr}: {e}")),
    })
}

/// etcd: reachable within 5 s, and its version.
async fn etcd(endpoints: &[String]) -> Check {
    if endpoints.is_empty() {
        return check(
            Verdict::Skip,
            "etcd",
            "not checked: pass --etcd or set HALYARD_ETCD for a multi-process cluster (a standalone needs none)",
        );
    }
    let list = endpoints.join(",");
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let kv = halyard_core::kv::EtcdKv::connect(endpoints, &Default::default()).await?;
        kv.version().await
    })
    .await;
    match answer {
        Ok(Ok(version)) => check(
            Verdict::Ok,
            "etcd",
            format!("{list} answers: etcd {version}"),
        ),
        Ok(Err(e)) => check(
            Verdict::Fail,
            "etcd",
            format!(
                "{e}: start etcd there or correct --etcd / HALYARD_ETCD (an etcd with TLS or users is checked by the nodes' own flags, not here)"
            ),
        ),
        Err(_) => check(
            Verdict::Fail,
            "etcd",
            format!(
                "{list} did not answer within 5 s: is etcd running there, and is the address right?"
            ),
        ),
    }
}

/// The object store: a probe object written, read back and deleted.
async fn store(url: Option<&str>) -> Check {
    let Some(url) = url else {
        return check(
            Verdict::Skip,
            "store",
            "not checked: pass --store or set HALYARD_STORE for a cluster's store (a standalone's is in its data directory)",
        );
    };
    // At the top: a file store keeps no folder behind once the probe is deleted.
    let rel = format!("halyard-doctor-probe-{}", std::process::id());
    let probe = bytes::Bytes::from_static(b"halyard doctor probe");
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let store = halyard_core::store::Store::open(url, &Default::default())?;
        store.put(&rel, probe.clone()).await?;
        let back = store.get(&rel).await?;
        store.delete(&rel).await?;
        Ok::<_, halyard_core::Error>(back == probe)
    })
    .await;
    match answer {
        Ok(Ok(true)) => check(
            Verdict::Ok,
            "store",
            format!("{url}: writable (a probe object written, read back and deleted)"),
        ),
        Ok(Ok(false)) => check(
            Verdict::Fail,
            "store",
            format!("{url}: a probe object read back different from what was written"),
        ),
        Ok(Err(e)) => check(Verdict::Fail, "store", e.to_string()),
        Err(_) => check(
            Verdict::Fail,
            "store",
            format!("{url} did not answer within 10 s: is the S3 endpoint right?"),
        ),
    }
}

/// The data directory: writable, and its free space.
fn data(dir: &Path) -> Vec<Check> {
    if !dir.exists() {
        return vec![check(
            Verdict::Ok,
            "data dir",
            format!(
                "{} does not exist yet; `halyard standalone` creates it (set HALYARD_DATA_DIR to put it elsewhere)",
                dir.display()
            ),
        )];
    }
    let probe = dir.join(format!(".doctor-{}", std::process::id()));
    let mut checks = vec![match std::fs::write(&probe, b"ok") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            check(
                Verdict::Ok,
                "data dir",
                format!("{} is writable", dir.display()),
            )
        }
        Err(e) => check(
            Verdict::Fail,
            "data dir",
            format!(
                "cannot write in {}: {e}; fix its permissions or set HALYARD_DATA_DIR to a folder you own",
                dir.display()
            ),
        ),
    }];
    if let Some(free) = halyard_core::disk::free_bytes(dir) {
        let gib = free as f64 / f64::from(1u32 << 30);
        checks.push(if free < LOW_DISK_BYTES {
            check(
                Verdict::Warn,
                "disk",
                format!(
                    "{gib:.1} GiB free under {}: training data, feature tables and models need room; free some space",
                    dir.display()
                ),
            )
        } else {
            check(Verdict::Ok, "disk", format!("{gib:.1} GiB free under {}", dir.display()))
        });
    }
    checks
}

/// GPU training: whether this build has it, and the Vulkan loader it needs.
fn gpu() -> Check {
    if !halyard_models::device::GPU_BUILD {
        return check(
            Verdict::Ok,
            "gpu",
            "this build trains on the CPU (build with `--features gpu` for Vulkan GPUs, docs/gpu.md)",
        );
    }
    let loader = [
        "/usr/lib/x86_64-linux-gnu/libvulkan.so.1",
        "/usr/lib/libvulkan.so.1",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    if loader {
        check(
            Verdict::Ok,
            "gpu",
            "GPU build; the Vulkan loader is installed",
        )
    } else {
        check(
            Verdict::Warn,
            "gpu",
            "GPU build, but no Vulkan loader (libvulkan.so.1): install libvulkan1 and the GPU's Vulkan driver (docs/gpu.md)",
        )
    }
}

/// Run every check, print one line each; an error when any failed.
pub async fn run(conn: &Connection, services: &Services) -> Result<()> {
    let mut checks = cluster(conn).await;
    if checks
        .iter()
        .any(|c| c.what == "scheduler" && c.verdict == Verdict::Fail)
    {
        checks.extend(port(&conn.scheduler));
    }
    checks.push(etcd(&services.etcd).await);
    checks.push(store(services.store.as_deref()).await);
    checks.extend(data(&local_data_dir()));
    checks.push(gpu());
    for c in &checks {
        let mark = match c.verdict {
            Verdict::Ok => "ok  ",
            Verdict::Skip => "-   ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        };
        out(&format!("{mark} {:<10} {}", c.what, c.line));
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    if failed > 0 {
        return Err(CliError::Failed(format!(
            "{failed} check(s) failed (above)"
        )));
    }
    Ok(())
}
