//! The console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! which `.ci/run` installs), driven over WebDriver: sign in, submit a bad spec and read
//! its errors, submit the demo spec and watch its page update live until it succeeds with
//! a training curve, deploy the model, see outcomes fed back appear on its page, roll
//! back; a viewer's key sees no button that changes anything; the version's report (its
//! page, and the file `halyard report` writes, opened offline) shows every plot drawn. Screenshots of every page
//! go to `$CARGO_TARGET_TMPDIR/console/`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use common::*;
use serde_json::{Value, json};

/// A chromedriver process and one headless browser session.
struct Browser {
    driver: Child,
    base: String,
    http: reqwest::Client,
    shots: PathBuf,
}

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

impl Browser {
    async fn start(dir: &Path, shots: PathBuf) -> Browser {
        let port = free_port();
        let log = std::fs::File::create(dir.join("chromedriver.log")).unwrap();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"],
            },
        }}});
        let url = format!("http://127.0.0.1:{port}/session");
        let session: Value = wait_for("chromedriver", Duration::from_secs(30), || async {
            let r = http
                .post(&url)
                .header("content-type", "application/json")
                .body(caps.to_string())
                .send()
                .await
                .ok()?;
            serde_json::from_slice(&r.bytes().await.ok()?).ok()
        })
        .await;
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {session}"))
            .to_string();
        std::fs::create_dir_all(&shots).unwrap();
        Browser {
            driver,
            base: format!("http://127.0.0.1:{port}/session/{id}"),
            http,
            shots,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "GET" => self.http.get(url),
            _ => self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string()),
        };
        let bytes = req.send().await.unwrap().bytes().await.unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        v["value"].clone()
    }

    async fn go(&self, url: &str) {
        self.call("POST", "/url", json!({ "url": url })).await;
    }

    async fn url(&self) -> String {
        self.call("GET", "/url", Value::Null)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn find(&self, css: &str) -> Option<String> {
        let v = self
            .call(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        v[ELEMENT].as_str().map(str::to_string)
    }

    async fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.call("POST", &format!("/element/{e}/clear"), json!({}))
            .await;
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let e = self.find(css).await.unwrap_or_else(|| panic!("no {css}"));
        self.call("POST", &format!("/element/{e}/click"), json!({}))
            .await;
    }

    /// Accept the confirmation dialog a form asks.
    async fn confirm(&self) {
        wait_for("a confirmation dialog", Duration::from_secs(10), || async {
            let v = self.call("POST", "/alert/accept", json!({})).await;
            v.is_null().then_some(())
        })
        .await;
    }

    /// What `script` returns in the page, called with `css` as its `arguments[0]`.
    async fn exec(&self, script: &str, css: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": [css]}),
        )
        .await
    }

    /// `document.querySelector(css)`'s text, or "" when there is none.
    async fn text(&self, css: &str) -> String {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : '';";
        let v = self.exec(script, css).await;
        v.as_str().unwrap_or("").to_string()
    }

    /// The number of elements matching `css`.
    async fn count(&self, css: &str) -> u64 {
        let script = "return document.querySelectorAll(arguments[0]).length;";
        self.exec(script, css).await.as_u64().unwrap_or(0)
    }

    async fn screenshot(&self, name: &str) {
        let v = self.call("GET", "/screenshot", Value::Null).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::write(self.shots.join(format!("{name}.png")), png).unwrap();
    }

    /// Wait until the form field `css`'s value contains `want`.
    async fn wait_text_value(&self, css: &str, want: &str) {
        let script = "const e = document.querySelector(arguments[0]); return e ? e.value : '';";
        wait_for(
            &format!("{css} to hold {want:?}"),
            Duration::from_secs(10),
            || async {
                let v = self.exec(script, css).await;
                v.as_str().is_some_and(|t| t.contains(want)).then_some(())
            },
        )
        .await;
    }

    /// Wait until `css`'s text contains `want`.
    async fn wait_text(&self, css: &str, want: &str, timeout: Duration) -> String {
        let mut last = String::new();
        let r = tokio::time::timeout(timeout, async {
            loop {
                last = self.text(css).await;
                if last.contains(want) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        assert!(r.is_ok(), "{css} never showed {want:?}; last: {last}");
        last
    }
}

impl Drop for Browser {
    /// End the session first (chromedriver closes the browser: killing chromedriver
    /// alone leaves Chromium's processes running), then stop chromedriver.
    fn drop(&mut self) {
        let session = self.base.trim_start_matches("http://");
        if let Some((addr, path)) = session.split_once('/') {
            let _ = end_session(addr, &format!("/{path}"));
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// `DELETE path` on `addr` over a plain socket (a `Drop` cannot await), waiting for the
/// answer so that the browser is gone when it returns.
fn end_session(addr: &str, path: &str) -> std::io::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "DELETE {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    Ok(())
}

/// Each plot of a response model's report is on the page, laid out at a real size, with
/// its lines drawn: ROC, precision–recall, calibration, gains, lift, training curves.
async fn plots_are_drawn(b: &Browser) {
    for id in ["roc", "pr", "calibration", "gains", "lift", "training"] {
        let drawn = b
            .exec(
                "const s = document.querySelector(arguments[0]); if (!s) return 'missing'; \
                 const r = s.getBoundingClientRect(); \
                 const lines = s.querySelectorAll('polyline, path, rect').length; \
                 return (r.width > 200 && r.height > 150 && lines > 2) ? 'drawn' : `${r.width}x${r.height}, ${lines} shapes`;",
                &format!("#{id} svg"),
            )
            .await;
        assert_eq!(drawn, json!("drawn"), "the {id} plot");
    }
    let text = b
        .exec(
            "return document.querySelector(arguments[0]).textContent;",
            "body",
        )
        .await;
    let text = text.as_str().unwrap_or_default();
    for words in [
        "ROC curve (AUC 0.",
        "Calibration",
        "Lift by decile",
        "Metrics",
        "auc",
    ] {
        assert!(text.contains(words), "{words:?} in the report: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_trains_deploys_and_rolls_back_in_a_real_browser() {
    if missing(&["chromium", "chromedriver"], "chromium chromium-driver") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = halyard_cli::datagen::generate(dir, 30_000, 3).unwrap();
    let (cluster, client) = standalone(dir, 1).await;
    let console = format!("http://{}", cluster.scheduler.addr);
    let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console");
    let b = Browser::start(dir, shots.clone()).await;

    // Not signed in: the sign-in page, which refuses a wrong key.
    b.go(&format!("{console}/jobs")).await;
    assert!(
        b.url().await.contains("/login?next=%2Fjobs"),
        "{}",
        b.url().await
    );
    b.type_into("input[name=key]", "hk_000000000000_nonsense")
        .await;
    b.click("form[action='/login'] button").await;
    b.wait_text("main", "unknown", Duration::from_secs(10))
        .await;
    b.screenshot("login-refused").await;
    b.type_into("input[name=key]", &cluster.admin_key).await;
    b.click("form[action='/login'] button").await;
    b.wait_text("h1", "Jobs", Duration::from_secs(10)).await;

    // The cluster page.
    b.go(&format!("{console}/")).await;
    let main = b
        .wait_text("main", "Executors", Duration::from_secs(10))
        .await;
    assert!(main.contains(&cluster.executors[0].id), "{main}");
    b.screenshot("cluster").await;

    // A bad spec: every problem, with its line, before anything runs.
    b.go(&format!("{console}/jobs")).await;
    b.type_into(
        "textarea[name=spec]",
        "name = \"console-demo\"\n[data]\nlabel = \"responded\"\n[train]\nepochs = 0\n",
    )
    .await;
    b.click("form.submit button").await;
    let error = b
        .wait_text("#submit-error", "line", Duration::from_secs(10))
        .await;
    assert!(
        error.contains("source") && error.contains("epochs"),
        "{error}"
    );
    // Nothing typed is lost: the refused spec is still in the box.
    b.wait_text_value("#spec", "epochs = 0").await;
    b.screenshot("jobs-bad-spec").await;

    // The demo spec: the job's page follows it live to the end.
    let spec = format!(
        "name = \"console-demo\"\n[data]\nsource = \"{}\"\nlabel = \"responded\"\nexclude = [\"customer_id\"]\n\
         [model]\ntype = \"mlp\"\nhidden = [32]\n[train]\nepochs = 12\nbatch_size = 64\nlearning_rate = 0.01\n",
        data.responses.display()
    );
    // Read from a file, as a user would upload it.
    let spec_file = dir.join("console-demo.toml");
    std::fs::write(&spec_file, &spec).unwrap();
    b.type_into("textarea[name=spec]", "").await;
    let input = b.find("input[type=file]").await.unwrap();
    b.call(
        "POST",
        &format!("/element/{input}/value"),
        json!({ "text": spec_file.display().to_string() }),
    )
    .await;
    b.wait_text_value("#spec", "console-demo").await;
    b.click("form.submit button").await;
    let first = b.wait_text("h1", "Job ", Duration::from_secs(10)).await;
    let job_url = b.url().await;
    let at_first = b.text("#summary").await;
    b.screenshot("job-running").await;
    b.wait_text("#summary", "succeeded", Duration::from_secs(240))
        .await;
    assert_eq!(b.url().await, job_url, "the page updated itself: no reload");
    assert!(
        !at_first.contains("succeeded"),
        "the job was still going when its page opened ({first}: {at_first})"
    );
    let points = b
        .exec(
            "const p = document.querySelector(arguments[0]); return p ? p.getAttribute('points').split(' ').length : 0;",
            "#curve polyline",
        )
        .await;
    assert!(points.as_u64().unwrap_or(0) >= 2, "curve points: {points}");
    let log = b.text("#log").await;
    assert!(
        log.contains("/12 loss") && log.contains("published"),
        "{log}"
    );
    b.screenshot("job-succeeded").await;

    // The version's report: linked beside the version on the model's page, and the same
    // page written by `halyard report`, read from the file with the network unused.
    b.go(&format!("{console}/models/console-demo")).await;
    b.wait_text("main table", "report", Duration::from_secs(10))
        .await;
    b.click("a.report").await;
    b.wait_text("h1", "console-demo version 1", Duration::from_secs(10))
        .await;
    assert!(
        b.url()
            .await
            .ends_with("/models/console-demo/report?version=1")
    );
    plots_are_drawn(&b).await;
    b.screenshot("report").await;
    let file = dir.join("console-demo-report.html");
    halyard_cli::registry::report(&client, "console-demo@1", Some(&file))
        .await
        .unwrap();
    b.go(&format!("file://{}", file.display())).await;
    b.wait_text("h1", "console-demo version 1", Duration::from_secs(10))
        .await;
    plots_are_drawn(&b).await;
    let fetched = b
        .exec(
            "return performance.getEntriesByType('resource').map(e => e.name).join(' ') + document.querySelectorAll(arguments[0]).length;",
            "script, link, img, iframe",
        )
        .await;
    assert_eq!(fetched, json!("0"), "the saved report loads nothing else");
    b.screenshot("report-offline").await;
    // The signed-in key's jobs: this one.
    b.go(&format!("{console}/jobs?mine=on")).await;
    b.wait_text("main table", "console-demo", Duration::from_secs(10))
        .await;
    assert!(b.text("main table").await.contains("you"));

    // The JSON API: events of the job, a spec refused with its lines, the document.
    let http = http_client(&cluster.admin_key);
    let job_id = job_url.rsplit('/').next().unwrap().to_string();
    let events: Value = serde_json::from_slice(
        &http
            .get(format!("{console}/v1/jobs/{job_id}/events"))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(events["state"], "succeeded");
    assert!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"] == "published"),
        "{events}"
    );
    let refused = http
        .post(format!("{console}/v1/jobs"))
        .header("content-type", "application/toml")
        .body("name = \"x\"\n[data]\nlabel = \"y\"\n[train]\nepochs = 0\n")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 400);
    let why = refused.text().await.unwrap();
    assert!(why.contains("line 5"), "{why}");
    let doc = reqwest::get(format!("{console}/v1/openapi.json"))
        .await
        .unwrap();
    assert_eq!(doc.status().as_u16(), 200, "the document needs no key");
    let doc: Value = serde_json::from_slice(&doc.bytes().await.unwrap()).unwrap();
    assert!(doc["paths"]["/v1/jobs/{id}/events"].is_object());

    // Deploy from the model's page, feed outcomes back, roll back.
    b.go(&format!("{console}/models/console-demo")).await;
    b.wait_text("main", "Versions", Duration::from_secs(10))
        .await;
    b.click("button[name=deploy-1]").await;
    b.confirm().await;
    b.wait_text("#split", "v1 100%", Duration::from_secs(10))
        .await;
    for converted in [true, false, false] {
        let r = http
            .post(format!("{console}/v1/models/console-demo:feedback"))
            .header("content-type", "application/json")
            .body(json!({"version": 1, "converted": converted}).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    // The experiment part updates live: 3 outcomes, 1 conversion.
    let experiment = b
        .wait_text("#experiment", "33.33%", Duration::from_secs(10))
        .await;
    assert!(experiment.contains('3'), "{experiment}");
    b.screenshot("model-deployed").await;

    // The serving page: predictions sent while it is open move its numbers.
    b.go(&format!("{console}/serving")).await;
    b.wait_text("h1", "Serving", Duration::from_secs(10)).await;
    let record = json!({"customer_id": 1, "age": 40, "income": 50000, "tenure_months": 12,
        "region": "north", "segment": "value", "channel": "email", "campaign": "spring",
        "offer": "none", "previous_responses": 0, "days_since_last_contact": 30,
        "emails_opened_30d": 2});
    let sender = {
        let (http, console) = (http.clone(), console.clone());
        let body = json!({ "records": vec![record; 5] }).to_string();
        tokio::spawn(async move {
            for _ in 0..60 {
                let r = http
                    .post(format!("{console}/v1/models/console-demo:predict"))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut best_rate = 0.0f64;
    while !sender.is_finished() {
        let rate = b.text("#serving td .rate").await;
        best_rate = best_rate.max(rate.parse().unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    sender.await.unwrap();
    assert!(best_rate > 0.0, "the requests/s never moved");
    b.wait_text("#serving td .total", "60", Duration::from_secs(10))
        .await;
    b.screenshot("serving").await;
    b.go(&format!("{console}/models/console-demo")).await;
    b.wait_text("main", "Versions", Duration::from_secs(10))
        .await;
    b.click("form[data-confirm^='Restore'] button").await;
    b.confirm().await;
    b.wait_text("#split", "not deployed", Duration::from_secs(10))
        .await;
    b.screenshot("model-rolled-back").await;
    let audit = client.audit(0).await.unwrap();
    assert!(
        audit
            .iter()
            .any(|e| e.action == "deploy" && e.target == "console-demo"),
        "{audit:?}"
    );

    // A viewer sees the pages, not the buttons.
    let viewer = client
        .create_key(halyard_core::proto::CreateKeyRequest {
            name: "console-viewer".into(),
            role: "viewer".into(),
            models: String::new(),
            expires: String::new(),
        })
        .await
        .unwrap()
        .token;
    b.click("header form button").await;
    b.wait_text("h1", "Halyard", Duration::from_secs(10)).await;
    b.type_into("input[name=key]", &viewer).await;
    b.click("form[action='/login'] button").await;
    b.wait_text("h1", "Cluster", Duration::from_secs(10)).await;
    b.go(&format!("{console}/models/console-demo")).await;
    b.wait_text("main", "Versions", Duration::from_secs(10))
        .await;
    assert_eq!(b.count("form[action^='/console/']").await, 0);
    b.go(&format!("{console}/jobs")).await;
    b.wait_text("main", "console-demo", Duration::from_secs(10))
        .await;
    assert_eq!(b.count("textarea").await, 0);
    b.screenshot("viewer-jobs").await;
    b.go(&format!("{console}/jobs?mine=on")).await;
    b.wait_text("main", "No job matches", Duration::from_secs(10))
        .await;
    // The viewer's key is revoked: the next page sends the browser to sign in again.
    let viewer_id = viewer[3..15].to_string();
    client.revoke_key(&viewer_id).await.unwrap();
    wait_for(
        "the console to ask for a key again",
        Duration::from_secs(15),
        || async {
            b.go(&format!("{console}/jobs")).await;
            b.url().await.contains("/login?next=%2Fjobs").then_some(())
        },
    )
    .await;
    for shot in [
        "cluster",
        "jobs-bad-spec",
        "job-succeeded",
        "model-deployed",
    ] {
        assert!(shots.join(format!("{shot}.png")).metadata().unwrap().len() > 1000);
    }
    drop(b);
    cluster.stop().await;
}
