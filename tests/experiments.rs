//! `halyard experiment analyze`, the real binary: its JSON carries the analysis the
//! models crate checks against scipy/statsmodels/gbstats (`models/tests/experiments.rs`),
//! its text shows the sample-ratio check before any result, and bad input fails with exit
//! code 1 naming what is wrong. And a bandit deployment on a standalone cluster: the leader
//! moves traffic to the version that converts best, keeps the floor, and stops when the
//! split is set by hand.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use halyard_cli::registry::{DeployAction, Guardrail, deploy};

fn analyze(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_halyard"))
        .args(["experiment", "analyze"])
        .args(args)
        .output()
        .unwrap()
}

/// The arguments that analyse the committed sample with `metrics`, then `extra`.
fn sample_args<'a>(metrics: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--table",
        SAMPLE,
        "--variant",
        "variant",
        "--control",
        "control",
    ];
    for m in metrics {
        args.extend(["--metric", m]);
    }
    args.extend(extra);
    args
}

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/models/tests/fixtures/experiment_sample.csv"
);

#[test]
fn the_cli_reports_the_reference_figures_and_the_srm_check_first() {
    let args = sample_args(
        &["visit", "spend"],
        &["--covariate", "history", "--segment", "region"],
    );
    let out = analyze(&[&args[..], &["--json"]].concat());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: serde_json::Value = serde_json::from_str(include_str!(
        "../models/tests/fixtures/experiment_reference.json"
    ))
    .unwrap();
    let srm = got["overall"]["srm"]["p_value"].as_f64().unwrap();
    let reference = want["sample"]["overall"]["srm_p_value"].as_f64().unwrap();
    assert!(
        (srm - reference).abs() < 1e-4 * reference,
        "{srm} against {reference}"
    );
    let spend = &got["overall"]["metrics"][1];
    assert_eq!(spend["metric"], "spend");
    let mens = spend["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["variant"] == "mens")
        .unwrap();
    let p = mens["fixed"]["p_value"].as_f64().unwrap();
    let reference = want["sample"]["overall"]["metrics"]["spend"]["variants"]["mens"]["p_value"]
        .as_f64()
        .unwrap();
    assert!(
        (p - reference).abs() < 1e-4 * reference,
        "{p} against {reference}"
    );
    assert_eq!(got["segments"].as_array().unwrap().len(), 2);

    let text = String::from_utf8(analyze(&args).stdout).unwrap();
    let srm_at = text.find("sample ratio:").expect(&text);
    assert!(
        srm_at < text.find("visit (rate, primary)").expect(&text),
        "{text}"
    );
    assert!(text.contains("CUPED on history"), "{text}");

    // A ratio metric: spend per visiting customer, after the plain metrics.
    let out = analyze(&sample_args(
        &["visit"],
        &["--ratio", "spend_per_visit=spend/visit"],
    ));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.find("spend_per_visit (ratio): control ratio 99.0315 over")
            > text.find("visit (rate, primary)"),
        "{text}"
    );
    let out = analyze(&sample_args(&["visit"], &["--ratio", "spend_per_visit"]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "a malformed --ratio is a usage error"
    );
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("NAME=NUMERATOR/DENOMINATOR"), "{err}");
}

#[test]
fn a_broken_split_is_flagged_and_bad_input_fails_naming_it() {
    // A 1:1:2 split read as equal: the check flags it before any result.
    let out = analyze(&sample_args(&["visit"], &["--split", "1,1,2"]));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!("file://{SAMPLE}")), "{text}");
    assert!(text.contains("SAMPLE RATIO MISMATCH"), "{text}");

    let out = analyze(&sample_args(&["region"], &[]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("\"region\"") && err.contains("not numbers"),
        "{err}"
    );

    let out = analyze(&[
        "--table",
        "no/such/file.csv",
        "--variant",
        "v",
        "--control",
        "c",
        "--metric",
        "m",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("no/such/file.csv"), "{err}");
}

/// Weights of the deployment's variants, by version.
async fn weights(client: &halyard_client::Client, name: &str) -> Vec<(u64, u32)> {
    let m = client.model(name).await.unwrap();
    m.deployment
        .map(|d| d.variants.iter().map(|v| (v.version, v.weight)).collect())
        .unwrap_or_default()
}

/// A standalone cluster in `dir` with two versions of model `offer`.
async fn two_versions(dir: &std::path::Path) -> (halyard::Standalone, halyard_client::Client) {
    two_versions_on(dir, 1).await
}

/// [`two_versions`] with `executors` executors.
async fn two_versions_on(
    dir: &std::path::Path,
    executors: u32,
) -> (halyard::Standalone, halyard_client::Client) {
    let g = halyard_cli::datagen::generate(&dir.join("data"), 2000, 3).unwrap();
    let (cluster, client) = standalone(dir, executors).await;
    for _ in 0..2 {
        let job = client
            .submit(&spec(dir, "offer", &g.responses, 1, 256))
            .await
            .unwrap();
        assert_eq!(
            wait_done(&client, &job.id, Duration::from_secs(300))
                .await
                .state,
            "succeeded"
        );
    }
    (cluster, client)
}

/// Feed `offer` 200 outcomes per version: version 1 converts `rates.0` percent of the
/// time, version 2 `rates.1` percent.
async fn feed(cluster: &halyard::Standalone, rates: (usize, usize)) {
    for i in 0..400 {
        let (version, rate) = if i % 2 == 0 {
            (1, rates.0)
        } else {
            (2, rates.1)
        };
        let converted = (i / 2) % 100 < rate;
        let (status, text) = feedback(
            cluster,
            &serde_json::json!({"version": version, "converted": converted}),
        )
        .await;
        assert_eq!(status, 200, "{text}");
    }
}

/// POST `body` to `offer`'s `:feedback` on the scheduler: the status and the reply.
async fn feedback(cluster: &halyard::Standalone, body: &serde_json::Value) -> (u16, String) {
    call(cluster, "feedback", body).await
}

/// POST `body` to `offer`'s `:VERB` on the scheduler: the status and the reply.
async fn call(
    cluster: &halyard::Standalone,
    verb: &str,
    body: &serde_json::Value,
) -> (u16, String) {
    let r = http_client(&cluster.admin_key)
        .post(format!(
            "http://{}/v1/models/offer:{verb}",
            cluster.scheduler.addr
        ))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Wait until `executors` executors have versions 1 and 2 of `offer` loaded.
async fn both_loaded(client: &halyard_client::Client, executors: usize) {
    wait_for("both versions to load", Duration::from_secs(30), || async {
        let d = client.model("offer").await.ok()?.deployment?;
        let loaded = d
            .served_by
            .iter()
            .filter(|s| s.versions.contains(&1) && s.versions.contains(&2))
            .count();
        (loaded >= executors).then_some(())
    })
    .await;
}

/// The `:predict` body of the first record of the data [`two_versions`] trained on.
fn first_record(dir: &std::path::Path) -> serde_json::Value {
    let g = dir.join("data/campaign/responses.csv");
    let s = spec(dir, "offer", &g, 1, 256);
    serde_json::from_str(&first_record_body(&s, &g)).unwrap()
}

/// Feed outcomes in which version 2 converts four times as often as version 1 and wait
/// until the bandit gives it over 90 % of the traffic; the weights then.
async fn version_2_wins(
    cluster: &halyard::Standalone,
    client: &halyard_client::Client,
) -> Vec<(u64, u32)> {
    feed(cluster, (10, 40)).await;
    wait_for(
        "the bandit to re-weigh",
        Duration::from_secs(20),
        || async {
            let w = weights(client, "offer").await;
            (w.len() == 2 && w[1].1 > 9_000).then_some(w)
        },
    )
    .await
}

/// Set `offer`'s split by hand (`1=50,2=50`).
async fn set_split(client: &halyard_client::Client, split: &str) {
    let action = DeployAction::from_flags(None, String::new(), None, Some(split.into())).unwrap();
    deploy(client, "offer", action, true).await.unwrap();
}

/// Make `version` production with all traffic.
fn production(version: u64) -> DeployAction {
    DeployAction::Version {
        version,
        alias: "production".into(),
        percent: None,
    }
}

/// Wait until `offer`'s ramp was rolled back (production `to` takes all traffic again)
/// and return the leader's audit event of it, recorded after `since`.
async fn rolled_back(
    client: &halyard_client::Client,
    since: i64,
    to: u64,
) -> halyard_core::proto::AuditEntry {
    wait_for(
        "the guardrail to roll back",
        Duration::from_secs(20),
        || async {
            let d = client.model("offer").await.ok()?.deployment?;
            (d.ramp.is_none() && !d.aliases.contains_key("canary")).then_some(())
        },
    )
    .await;
    assert_eq!(weights(client, "offer").await, vec![(to, 100)]);
    let audit = client.audit(since).await.unwrap();
    let rollback = audit
        .iter()
        .find(|e| e.action == "ramp-rollback")
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert_eq!(rollback.target, "offer");
    rollback.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bandit_moves_traffic_to_the_better_version_and_stops_when_set_by_hand() {
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, client) = two_versions(tmp.path()).await;
    let action = DeployAction::bandit(vec![1, 2], "5%", "1s").unwrap();
    deploy(&client, "offer", action, true).await.unwrap();
    assert_eq!(weights(&client, "offer").await, vec![(1, 5000), (2, 5000)]);
    let moved = version_2_wins(&cluster, &client).await;
    assert_eq!(
        moved[0],
        (1, 500),
        "the loser keeps its 5 % floor: {moved:?}"
    );
    // The registry shows the policy (halyard model prints it).
    let shown = client.model("offer").await.unwrap().deployment.unwrap();
    let policy = shown.bandit.unwrap();
    assert_eq!(
        (policy.versions, policy.floor_bp, policy.every_secs),
        (vec![1, 2], 500, 1)
    );
    // A split by hand ends the bandit: the leader leaves it alone.
    set_split(&client, "1=100").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(weights(&client, "offer").await, vec![(1, 100)]);
    let shown = client.model("offer").await.unwrap().deployment.unwrap();
    assert!(shown.bandit.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ramp_steps_up_and_promotes_or_rolls_back_when_its_guardrail_breaks() {
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, client) = two_versions(tmp.path()).await;
    // Healthy: no guardrail breaks, so version 2 goes 10 % → 50 % → production.
    deploy(&client, "offer", production(1), true).await.unwrap();
    let ramp = DeployAction::ramp(2, vec![10, 50], "1s", &[Guardrail::Conversion]).unwrap();
    deploy(&client, "offer", ramp, true).await.unwrap();
    assert_eq!(weights(&client, "offer").await, vec![(1, 90), (2, 10)]);
    let promoted = wait_for("the ramp to promote", Duration::from_secs(20), || async {
        let d = client.model("offer").await.ok()?.deployment?;
        (d.aliases.get("production") == Some(&2) && d.ramp.is_none()).then_some(d)
    })
    .await;
    assert_eq!(promoted.variants.len(), 1);

    // Broken: version 1 ramps against production 2 and converts far worse: rolled back
    // before its first step ends, with the reason in the audit log.
    let since = halyard_core::records::now_ms();
    let ramp = DeployAction::ramp(1, vec![10, 50], "1h", &[Guardrail::Conversion]).unwrap();
    deploy(&client, "offer", ramp, true).await.unwrap();
    feed(&cluster, (5, 40)).await;
    let rollback = rolled_back(&client, since, 2).await;
    assert!(
        rollback.outcome.contains("guardrail conversion broke"),
        "{rollback:?}"
    );
}

#[test]
fn a_test_is_planned_before_it_starts() {
    let plan = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_halyard"))
            .args(["experiment", "plan"])
            .args(args)
            .output()
            .unwrap()
    };
    // 10 % → 11 %: statsmodels' 14,748.01 per group (models/tests/fixtures/plan_reference.json).
    let out = plan(&[
        "--baseline",
        "0.10",
        "--effect",
        "10%",
        "--daily",
        "1000",
        "--json",
    ]);
    let j: serde_json::Value = serde_json::from_str(&succeeded(&out)).unwrap();
    assert_eq!(
        (j["per_group"].as_f64(), j["total"].as_f64()),
        (Some(14_749.0), Some(29_498.0))
    );
    assert_eq!(j["days"], 30.0);
    let text = succeeded(&plan(&[
        "--baseline",
        "0.10",
        "--effect",
        "0.01",
        "--groups",
        "3",
    ]));
    assert!(
        text.contains("14749 per group, 44247 in all (3 groups)"),
        "{text}"
    );
    // A mean with its standard deviation.
    let j: serde_json::Value = serde_json::from_str(&succeeded(&plan(&[
        "--baseline",
        "1.05",
        "--effect",
        "0.25",
        "--sd",
        "15.9",
        "--json",
    ])))
    .unwrap();
    assert_eq!(j["per_group"], 63_497.0);
    // Bad input says what is wrong.
    for (args, says) in [
        (
            vec!["--baseline", "0.1", "--effect", "lots"],
            "--effect \"lots\"",
        ),
        (
            vec!["--baseline", "0.95", "--effect", "0.1"],
            "between 0 and 1",
        ),
        (
            vec!["--baseline", "0.1", "--effect", "0.01", "--power", "2"],
            "--power",
        ),
    ] {
        let out = plan(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code() == Some(1) && err.contains(says),
            "{args:?}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_that_fails_requests_is_rolled_back_by_its_errors_guardrail() {
    let tmp = tempfile::tempdir().unwrap();
    let g = halyard_cli::datagen::generate(&tmp.path().join("data"), 2000, 3).unwrap();
    let (cluster, client) = standalone(tmp.path(), 1).await;
    // Version 1 is trained without `channel`, version 2 with it: requests that leave
    // `channel` out are answered by version 1 and refused by version 2.
    let mut without = spec(tmp.path(), "offer", &g.responses, 1, 256);
    without.data.exclude.push("channel".into());
    let with = spec(tmp.path(), "offer", &g.responses, 1, 256);
    for s in [&without, &with] {
        let job = client.submit(s).await.unwrap();
        let done = wait_done(&client, &job.id, Duration::from_secs(300)).await;
        assert_eq!(done.state, "succeeded", "{done:?}");
    }
    deploy(&client, "offer", production(1), true).await.unwrap();
    let since = halyard_core::records::now_ms();
    let guards = [Guardrail::Errors, Guardrail::Latency];
    let ramp = DeployAction::ramp(2, vec![50], "1h", &guards).unwrap();
    deploy(&client, "offer", ramp, true).await.unwrap();
    let shown = client.model("offer").await.unwrap().deployment.unwrap();
    let r = shown.ramp.unwrap();
    assert!(
        r.guard_errors && r.guard_latency && !r.guard_conversion,
        "{r:?}"
    );
    both_loaded(&client, 1).await;

    let mut body: serde_json::Value =
        serde_json::from_str(&first_record_body(&without, &g.responses)).unwrap();
    body["record"].as_object_mut().unwrap().remove("channel");
    let (mut answered, mut refused) = (0, 0);
    for i in 0..300 {
        body["key"] = serde_json::json!(format!("customer-{i}"));
        match call(&cluster, "predict", &body).await {
            (200, _) => answered += 1,
            (400, text) => {
                assert!(text.contains("channel"), "{text}");
                refused += 1;
            }
            // Rolled back already: only version 1 serves.
            (s, text) => panic!("status {s}: {text}"),
        }
    }
    assert!(
        answered > 100 && refused > 30,
        "{answered} answered, {refused} refused"
    );

    // The report counts each version's requests and failures (the canary's too once it
    // was rolled back).
    let e = wait_for(
        "the requests to be counted",
        Duration::from_secs(10),
        || async {
            let e = client.experiment("offer").await.ok()?;
            (e.variants.iter().map(|v| v.requests).sum::<u64>() >= 300).then_some(e)
        },
    )
    .await;
    let v = |n| *e.variants.iter().find(|v| v.version == n).unwrap();
    let (v1, v2) = (v(1), v(2));
    assert_eq!(v1.errors, 0, "{v1:?}");
    assert_eq!(v2.errors, v2.requests, "{v2:?}");
    // No outcomes and (once rolled back) out of the split: no posterior of its own.
    assert!(v2.prob_best.is_nan() || v2.weight > 0, "{v2:?}");
    assert_eq!(v2.errors, refused as u64, "{v2:?}");
    assert!(v1.p50_ms > 0.0 && v1.p99_ms >= v1.p50_ms, "{v1:?}");

    let rollback = rolled_back(&client, since, 1).await;
    // Counted as the leader saw them: every request the canary got failed, none of
    // production's.
    assert!(
        rollback
            .outcome
            .contains("guardrail errors broke: the canary failed ")
            && rollback.outcome.contains("against production's 0 of "),
        "{rollback:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declared_metrics_refuse_other_feedback_and_order_the_report() {
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, client) = two_versions(tmp.path()).await;
    set_split(&client, "1=50,2=50").await;
    let declare = |m: &[&str]| DeployAction::Metrics(m.iter().map(|s| s.to_string()).collect());
    // Refused whole, naming the problem.
    for (bad, says) in [
        (
            &["visit:binary:primary", "spend:continuous:primary"][..],
            "one primary",
        ),
        (&["visit:boolean"][..], "unknown kind \"boolean\""),
        (&["visit:binary", "visit:continuous"][..], "declared twice"),
        (&["conversion:continuous"][..], "is binary"),
        (&["Visit:binary"][..], "lowercase"),
    ] {
        let e = deploy(&client, "offer", declare(bad), true)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(says), "{bad:?}: {e}");
    }
    // The first is primary unless another says so.
    deploy(
        &client,
        "offer",
        declare(&[
            "visit:binary",
            "unsubscribe:binary:guardrail",
            "spend:continuous",
        ]),
        true,
    )
    .await
    .unwrap();
    let shown = client.model("offer").await.unwrap().deployment.unwrap();
    assert_eq!(
        shown.metrics,
        [
            "visit:binary:primary",
            "unsubscribe:binary:guardrail",
            "spend:continuous:secondary"
        ]
    );
    // The split is untouched.
    assert_eq!(weights(&client, "offer").await, vec![(1, 50), (2, 50)]);

    let post = |body: serde_json::Value| {
        let cluster = &cluster;
        async move { feedback(cluster, &body).await }
    };
    let (status, text) =
        post(serde_json::json!({"version": 1, "metric": "revenue", "value": 3.0})).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("declares the metrics visit, unsubscribe, spend, not revenue"),
        "{text}"
    );
    let (status, text) = post(serde_json::json!({"version": 1, "converted": true})).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not conversion"), "{text}");
    let (status, text) =
        post(serde_json::json!({"version": 1, "metric": "visit", "value": 0.5})).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("not 0 or 1 (it is declared binary)"),
        "{text}"
    );
    // A batch with one undeclared outcome counts none of it.
    let (status, text) = post(serde_json::json!([
        {"version": 1, "metric": "visit", "value": 1},
        {"version": 2, "metric": "clicks", "value": 4}
    ]))
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("outcome 1:"), "{text}");
    for (version, metric, value) in [(1, "visit", 1.0), (2, "visit", 0.0), (2, "spend", 12.5)] {
        let (status, text) =
            post(serde_json::json!({"version": version, "metric": metric, "value": value})).await;
        assert_eq!(status, 200, "{text}");
    }
    let e = client.experiment("offer").await.unwrap();
    let order: Vec<(&str, &str, u64)> = e
        .metrics
        .iter()
        .map(|m| (m.metric.as_str(), m.role.as_str(), m.n))
        .collect();
    assert_eq!(
        order,
        [
            ("visit", "primary", 1),
            ("visit", "primary", 1),
            ("spend", "secondary", 0),
            ("spend", "secondary", 1),
            ("unsubscribe", "guardrail", 0),
            ("unsubscribe", "guardrail", 0),
        ]
    );

    // `--metrics none` takes any metric again (once the node's cached deployment, at most
    // a second old, is read again).
    deploy(&client, "offer", declare(&[]), true).await.unwrap();
    wait_for(
        "undeclared metrics to be taken",
        Duration::from_secs(10),
        || async {
            let (status, _) =
                post(serde_json::json!({"version": 1, "metric": "revenue", "value": 3.0})).await;
            (status == 200).then_some(())
        },
    )
    .await;
}

/// The version that scored each of `keys` (one keyed prediction each, through the
/// scheduler, which spreads them over the executors).
async fn versions_of(
    cluster: &halyard::Standalone,
    body: &serde_json::Value,
    keys: &[String],
) -> Vec<u64> {
    let mut out = Vec::new();
    for k in keys {
        let mut b = body.clone();
        b["key"] = serde_json::json!(k);
        let (status, text) = call(cluster, "predict", &b).await;
        assert_eq!(status, 200, "{text}");
        let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
        out.push(reply["predictions"][0]["version"].as_u64().unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bandit_keeps_each_key_on_the_version_it_got_across_executors() {
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, client) = two_versions_on(tmp.path(), 2).await;
    let action = DeployAction::bandit(vec![1, 2], "5%", "1s").unwrap();
    deploy(&client, "offer", action, true).await.unwrap();
    both_loaded(&client, 2).await;
    let body = first_record(tmp.path());
    let keys: Vec<String> = (0..200).map(|i| format!("early-{i}")).collect();
    let first = versions_of(&cluster, &body, &keys).await;
    let on_one = first.iter().filter(|v| **v == 1).count();
    assert!(
        (60..=140).contains(&on_one),
        "{on_one} of 200 on version 1 at 50/50"
    );

    version_2_wins(&cluster, &client).await;
    // Every early key stays where it was, on whichever executor it lands now ...
    let again = versions_of(&cluster, &body, &keys).await;
    assert_eq!(again, first);
    // ... while new keys follow the new weights.
    let late: Vec<String> = (0..100).map(|i| format!("late-{i}")).collect();
    let new = versions_of(&cluster, &body, &late).await;
    assert!(new.iter().filter(|v| **v == 2).count() > 80, "{new:?}");

    // An outcome fed back by key credits the key's sticky version.
    let i = first.iter().position(|v| *v == 1).unwrap();
    let (_, r) = feedback(
        &cluster,
        &serde_json::json!({"key": keys[i], "converted": true}),
    )
    .await;
    let r: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(r["version"], 1, "{r}");

    // A split by hand ends the bandit: the leader deletes its assignments.
    assert!(!cluster.coord.sticky("offer").await.unwrap().is_empty());
    set_split(&client, "1=50,2=50").await;
    wait_for(
        "the sticky assignments to go",
        Duration::from_secs(20),
        || async {
            cluster
                .coord
                .sticky("offer")
                .await
                .ok()?
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

/// Whether two JSON values are equal, numbers to 1e-9 relative (sums taken in another
/// order differ in the last bits).
fn close(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| close(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| close(v, w)))
        }
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_experiment_analysed_from_its_event_log_equals_the_same_campaign_as_a_table() {
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, client) = two_versions(tmp.path()).await;
    set_split(&client, "1=50,2=50").await;
    both_loaded(&client, 1).await;
    let body = first_record(tmp.path());
    let keys: Vec<String> = (0..300).map(|i| format!("c{i}")).collect();
    let variants = versions_of(&cluster, &body, &keys).await;

    // Outcomes by key: a visit for some customers (more often on version 2), spend for
    // those who visited (a third of it fed in two parts, which the log sums); a
    // pre-experiment covariate and a segment per customer in a table of their own.
    let mut outcomes = Vec::new();
    let mut campaign = String::from("customer_id,variant,visit,spend,history,segment\n");
    let mut table = String::from("customer_id,history,segment\n");
    for (i, (k, v)) in keys.iter().zip(&variants).enumerate() {
        let visit = (i * 7919 % 10) < if *v == 1 { 3 } else { 5 };
        let history = (i % 13) as f64 * 2.0 + (i % 5) as f64;
        let spend = if visit {
            history * if *v == 2 { 1.5 } else { 1.0 } + 4.0
        } else {
            0.0
        };
        outcomes.push(serde_json::json!({"key": k, "metric": "visit", "value": u8::from(visit)}));
        if visit {
            if i % 3 == 0 {
                for part in [spend / 4.0, spend * 3.0 / 4.0] {
                    outcomes.push(serde_json::json!({"key": k, "metric": "spend", "value": part}));
                }
            } else {
                outcomes.push(serde_json::json!({"key": k, "metric": "spend", "value": spend}));
            }
        }
        let segment = ["north", "south"][i % 2];
        campaign.push_str(&format!(
            "{k},{v},{},{spend},{history},{segment}\n",
            u8::from(visit)
        ));
        table.push_str(&format!("{k},{history},{segment}\n"));
    }
    // One customer of the log is missing from the keys table: left out, and said so.
    table = table.replacen("c7,", "gone,", 1);
    campaign = campaign
        .lines()
        .filter(|l| !l.starts_with("c7,"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(tmp.path().join("campaign.csv"), &campaign).unwrap();
    std::fs::write(tmp.path().join("customers.csv"), &table).unwrap();
    let (status, text) = feedback(&cluster, &serde_json::Value::Array(outcomes)).await;
    assert_eq!(status, 200, "{text}");

    let common = [
        "--control",
        "1",
        "--metric",
        "visit",
        "--metric",
        "spend",
        "--ratio",
        "spend_per_visit=spend/visit",
        "--covariate",
        "history",
        "--segment",
        "segment",
        "--json",
    ];
    let campaign_path = tmp.path().join("campaign.csv").display().to_string();
    let mut offline = vec!["--table", &campaign_path, "--variant", "variant"];
    offline.extend(common);
    let out = analyze(&offline);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // The same from the event log, by SQL on the cluster's Ballista, once the nodes have
    // flushed it to Parquet (every 2 s).
    let folder = format!("{}/events/offer/", cluster.store_url);
    let customers = tmp.path().join("customers.csv").display().to_string();
    let live = wait_for("the event files", Duration::from_secs(30), || async {
        let out = Command::new(env!("CARGO_BIN_EXE_halyard"))
            .env("HALYARD_SCHEDULER", cluster.scheduler.addr.to_string())
            .env("HALYARD_KEY", &cluster.admin_key)
            .args(["experiment", "analyze", "--events", &folder])
            .args(["--keys", &customers, "--key-column", "customer_id"])
            .args(common)
            .output()
            .unwrap();
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("no event files under"), "{err}");
            return None;
        }
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        // Every outcome flushed: the visits sum to the campaign's.
        close(&report, &expected).then_some((report, stderr))
    })
    .await;
    assert!(
        live.1
            .contains("1 of 300 keys of the event log have no row in"),
        "{}",
        live.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declared_guardrail_metric_rolls_a_ramp_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, client) = two_versions(tmp.path()).await;
    deploy(&client, "offer", production(1), true).await.unwrap();
    let ramp = || DeployAction::ramp(2, vec![50], "1h", &[Guardrail::Metrics]).unwrap();
    let e = deploy(&client, "offer", ramp(), true).await.unwrap_err();
    assert!(
        e.to_string().contains("declares no guardrail metric"),
        "{e}"
    );
    let declare = ["visit:binary", "unsubscribe:binary:guardrail:inverse"];
    let declare = DeployAction::Metrics(declare.iter().map(|s| s.to_string()).collect());
    deploy(&client, "offer", declare, true).await.unwrap();
    let since = halyard_core::records::now_ms();
    deploy(&client, "offer", ramp(), true).await.unwrap();

    // 2 % of production's customers unsubscribe, 25 % of the canary's (a thousand
    // each: a rate needs 10 of each outcome per group before it is compared).
    let outcomes: Vec<serde_json::Value> = (0..2000)
        .map(|i| {
            let (version, unsubscribed) = if i % 2 == 0 {
                (1, (i / 2) % 50 == 0)
            } else {
                (2, (i / 2) % 4 == 0)
            };
            serde_json::json!({"version": version, "metric": "unsubscribe", "value": u8::from(unsubscribed)})
        })
        .collect();
    let (status, text) = feedback(&cluster, &serde_json::Value::Array(outcomes)).await;
    assert_eq!(status, 200, "{text}");
    let rollback = rolled_back(&client, since, 1).await;
    assert!(
        rollback.outcome.contains("guardrail unsubscribe broke")
            && rollback.outcome.contains("lower is better"),
        "{rollback:?}"
    );
}
