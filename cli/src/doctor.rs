//! `halyard doctor`: the things that go wrong on first contact, checked one by one, each
//! with a line that says what was found and, when it is wrong, what to do.

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
    Warn,
    Fail,
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
    if let Ok(s) = rustix::fs::statvfs(dir) {
        let free = s.f_bavail.saturating_mul(s.f_frsize);
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
pub async fn run(conn: &Connection) -> Result<()> {
    let mut checks = cluster(conn).await;
    checks.extend(data(&local_data_dir()));
    checks.push(gpu());
    for c in &checks {
        let mark = match c.verdict {
            Verdict::Ok => "ok  ",
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
