//! No secret in any output: a real `halyard standalone` process with known secrets (its
//! admin key, a key made through the CLI, S3 credentials) runs a job end to end driven by
//! the real CLI; its log, every command's output, the job records and the published
//! artifacts are searched for the secrets.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Proc, free_port, wait_for};

const S3_SECRET: &str = "s3-secret-that-must-not-leak-7f3a";
/// The cluster's encryption key (64 hex digits), given on the command line.
const ENCRYPTION_KEY: &str = "7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de7e57c0de";

/// Run the CLI with the environment of the test cluster; returns stdout and stderr.
fn cli(dir: &Path, api: &str, key: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_halyard"));
    cmd.args(args)
        .current_dir(dir)
        .env("HALYARD_SCHEDULER", api)
        .env("HALYARD_KEY_FILE", dir.join("state").join("admin.key"))
        .env_remove("HALYARD_KEY");
    if let Some(k) = key {
        cmd.env("HALYARD_KEY", k);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Every file's text under `dir`, with its path.
fn texts(dir: &Path) -> Vec<(String, String)> {
    common::files_under(dir)
        .into_iter()
        .filter_map(|path| {
            let bytes = std::fs::read(&path).ok()?;
            Some((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_an_output_a_record_or_an_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let api = format!("127.0.0.1:{}", free_port());
    let state = dir.join("state");
    let _cluster = Proc::spawn(
        "standalone",
        dir,
        &[
            "standalone",
            "--listen",
            &api,
            "--data-dir",
            state.to_str().unwrap(),
            "--executors",
            "1",
            "--s3-access-key-id",
            "halyard-test",
            "--s3-secret-access-key",
            S3_SECRET,
            "--encryption-key",
            ENCRYPTION_KEY,
        ],
    );
    let key_file = state.join("admin.key");
    let admin = wait_for("the admin key", Duration::from_secs(60), || async {
        std::fs::read_to_string(&key_file)
            .ok()
            .filter(|k| !k.is_empty())
    })
    .await;
    let admin = admin.trim().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the key file is readable by others: {mode:o}"
        );
    }
    wait_for("the scheduler", Duration::from_secs(60), || async {
        cli(dir, &api, None, &["cluster"]).0.then_some(())
    })
    .await;

    let mut outputs = Vec::new();
    let run = |outputs: &mut Vec<(String, String)>, key: Option<&str>, args: &[&str]| {
        let (ok, text) = cli(dir, &api, key, args);
        assert!(ok, "halyard {args:?} failed:\n{text}");
        outputs.push((format!("halyard {args:?}"), text.clone()));
        text
    };
    // The CLI on this machine finds the admin key; a submitter key is made, used and listed.
    // Its creation is the one output meant to show a secret, so it is not searched.
    let (ok, made) = cli(
        dir,
        &api,
        None,
        &[
            "keys",
            "create",
            "--role",
            "submitter",
            "--name",
            "ci",
            "--json",
        ],
    );
    assert!(ok, "{made}");
    let v: serde_json::Value = serde_json::from_str(made.lines().next().unwrap()).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    assert!(v.get("secret_sha256").is_none(), "{made}");
    run(
        &mut outputs,
        None,
        &["datagen", "--out", "data", "--rows", "1500"],
    );
    std::fs::write(
        dir.join("job.toml"),
        "name = \"secret-check\"\n[data]\nsource = \"data/campaign/responses.csv\"\nlabel = \"responded\"\nexclude = [\"customer_id\"]\n[train]\nepochs = 2\n",
    )
    .unwrap();
    let submitted = run(
        &mut outputs,
        Some(&token),
        &["submit", "job.toml", "--follow", "--json"],
    );
    let id = submitted
        .lines()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .and_then(|v| v["id"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no job id in {submitted}"));
    for args in [
        vec!["jobs", "--json"],
        vec!["job", id.as_str(), "--json"],
        vec!["logs", id.as_str()],
        vec!["models", "--json"],
        vec!["keys", "list", "--json"],
        vec!["keys", "list"],
        vec!["cluster", "--json"],
    ] {
        run(&mut outputs, None, &args);
    }
    // A key that is refused says so without echoing it back.
    let (ok, refused) = cli(dir, &api, Some(&format!("{token}x")), &["jobs"]);
    assert!(!ok && refused.contains("unknown API key"), "{refused}");
    outputs.push(("a refused key".into(), refused));

    let mut files = texts(dir);
    files.retain(|(path, _)| !path.ends_with("admin.key"));
    let secrets = [
        ("the admin key's secret", admin[16..].to_string()),
        ("the submitter key's secret", token[16..].to_string()),
        ("the S3 secret", S3_SECRET.to_string()),
        ("the encryption key", ENCRYPTION_KEY.to_string()),
    ];
    let mut searched = 0;
    for (what, text) in outputs.iter().chain(files.iter()) {
        for (name, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "{name} appears in {what}");
        }
        searched += 1;
    }
    assert!(searched > 15, "searched only {searched} outputs and files");
    eprintln!(
        "searched {searched} outputs and files for {} secrets",
        secrets.len()
    );
}
