//! The container image and the deployment files (`Dockerfile`, `deploy/compose.yaml`,
//! `deploy/k8s/`), checked as far as a machine without a container runtime can: every
//! setting they pass is one Halyard has, every role they start exists, each node's
//! certificate, advertised name and key file line up with what the secrets step writes,
//! the probes and the image's health check reach `/healthz` of a real node (the script
//! itself, run against a real standalone), and, where the tools are installed, the files
//! pass `docker-compose config` and the Kubernetes API schemas (`kubernetes-validate
//! --strict`). Building and running the image needs a Docker daemon and a registry: not
//! here (deploy/README.md).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every YAML document of `file` as JSON, through Python's `yaml`.
fn yaml_docs(python: &str, file: &Path) -> Vec<Value> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))",
        ])
        .arg(file)
        .output()
        .unwrap();
    serde_json::from_str(&succeeded(&out)).unwrap()
}

/// The environment variables of Halyard's settings (`HALYARD_LISTEN`, …).
fn setting_variables() -> BTreeSet<String> {
    halyard_core::config::SETTINGS
        .iter()
        .map(|s| s.env())
        .collect()
}

/// `halyard ROLE --help` runs: the role exists.
fn assert_role(role: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_halyard"))
        .args([role, "--help"])
        .output()
        .unwrap();
    assert!(out.status.success(), "halyard {role} is no role: {out:?}");
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str().unwrap_or_else(|| panic!("{what}: {v}"))
}

#[test]
fn the_compose_file_starts_real_roles_with_real_settings_and_matching_certificates() {
    let Some(python) = python_with("yaml", "pip install pyyaml") else {
        return;
    };
    let settings = setting_variables();
    let compose = yaml_docs(&python, &root().join("deploy/compose.yaml")).remove(0);
    let services = compose["services"].as_object().unwrap();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    for want in [
        "init",
        "etcd",
        "s3",
        "scheduler-0",
        "scheduler-1",
        "prometheus",
    ] {
        assert!(names.contains(want), "no {want} service: {names:?}");
    }
    let mut nodes = BTreeMap::new();
    for (name, service) in services {
        let Some(role) = service["command"][0].as_str() else {
            continue;
        };
        if role != "scheduler" && role != "executor" {
            continue;
        }
        assert_role(role);
        let env = service["environment"].as_object().unwrap();
        for key in env.keys().filter(|k| k.starts_with("HALYARD_")) {
            assert!(settings.contains(key), "{name}: {key} is no setting");
        }
        let var = |k: &str| str_of(&env[k], &format!("{name} {k}")).to_string();
        let port = var("HALYARD_LISTEN")
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        assert_eq!(var("HALYARD_ID"), *name);
        assert_eq!(var("HALYARD_ADVERTISE"), format!("{name}:{port}"));
        assert_eq!(var("HALYARD_TLS_CERT"), format!("/secrets/{name}.pem"));
        assert_eq!(var("HALYARD_TLS_KEY"), format!("/secrets/{name}.key"));
        assert_eq!(var("HALYARD_KEY_FILE"), "/secrets/admin.key");
        assert_eq!(var("HALYARD_TLS_CA"), "/secrets/ca.pem");
        nodes.insert(name.clone(), (role.to_string(), port));
    }
    let roles: Vec<&str> = nodes.values().map(|(r, _)| r.as_str()).collect();
    assert_eq!(roles.iter().filter(|r| **r == "scheduler").count(), 2);
    assert_eq!(roles.iter().filter(|r| **r == "executor").count(), 3);
    // The secrets step makes a certificate for exactly these nodes.
    let init = str_of(&services["init"]["command"][0], "init's script");
    let listed = init
        .split_whitespace()
        .skip_while(|w| *w != "--nodes")
        .nth(1)
        .unwrap();
    let certified: BTreeSet<&str> = listed.split(',').collect();
    assert_eq!(
        certified,
        nodes.keys().map(String::as_str).collect::<BTreeSet<_>>()
    );
    assert!(init.contains("/secrets/admin.key"), "{init}");
    // Prometheus scrapes every node at its port.
    let prometheus = yaml_docs(&python, &root().join("deploy/prometheus-compose.yml")).remove(0);
    let scraped: BTreeSet<String> = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|job| {
            job["static_configs"][0]["targets"]
                .as_array()
                .unwrap()
                .clone()
        })
        .map(|t| str_of(&t, "target").to_string())
        .collect();
    let served: BTreeSet<String> = nodes
        .iter()
        .map(|(name, (_, port))| format!("{name}:{port}"))
        .collect();
    assert_eq!(scraped, served);
}

/// The containers of a workload's pod template.
fn containers(w: &Value) -> Vec<&Value> {
    w["spec"]["template"]["spec"]["containers"]
        .as_array()
        .map(|c| c.iter().collect())
        .unwrap_or_default()
}

#[test]
fn the_kubernetes_manifests_start_real_roles_with_probes_budgets_and_certificates() {
    let Some(python) = python_with("yaml", "pip install pyyaml") else {
        return;
    };
    let settings = setting_variables();
    let dir = root().join("deploy/k8s");
    let kustomization = yaml_docs(&python, &dir.join("kustomization.yaml")).remove(0);
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| str_of(r, "resource").to_string())
        .collect();
    let files: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|f| f.ends_with(".yaml") && f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files, "kustomization.yaml lists every manifest");
    let docs: Vec<Value> = files
        .iter()
        .flat_map(|f| yaml_docs(&python, &dir.join(f)))
        .collect();
    let of_kind =
        |kind: &str| -> Vec<&Value> { docs.iter().filter(|d| d["kind"] == kind).collect() };
    for config in of_kind("ConfigMap") {
        for key in config["data"].as_object().unwrap().keys() {
            assert!(settings.contains(key), "ConfigMap: {key} is no setting");
        }
    }
    let headless: BTreeSet<&str> = of_kind("Service")
        .into_iter()
        .filter(|s| s["spec"]["clusterIP"] == "None")
        .map(|s| str_of(&s["metadata"]["name"], "service name"))
        .collect();
    let script = std::fs::read_to_string(dir.join("make-secrets.sh")).unwrap();
    let mut roles = BTreeMap::new();
    let workloads: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Deployment" || d["kind"] == "StatefulSet")
        .collect();
    for w in &workloads {
        let name = str_of(&w["metadata"]["name"], "name");
        for c in containers(w) {
            let Some(role) = c["args"][0].as_str().filter(|_| c["image"] == "halyard") else {
                continue;
            };
            if role != "scheduler" && role != "executor" {
                continue;
            }
            assert_role(role);
            let env: BTreeMap<&str, &Value> = c["env"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| (str_of(&e["name"], "env name"), &e["value"]))
                .collect();
            for key in env.keys().filter(|k| k.starts_with("HALYARD_")) {
                assert!(settings.contains(*key), "{name}: {key} is no setting");
            }
            let ports: BTreeSet<&str> = c["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| str_of(&p["name"], "port name"))
                .collect();
            for probe in ["readinessProbe", "livenessProbe"] {
                let get = &c[probe]["httpGet"];
                assert_eq!(get["path"], "/healthz", "{name} {probe}");
                assert_eq!(
                    get["scheme"], "HTTPS",
                    "{name} {probe}: the nodes serve TLS"
                );
                assert!(
                    ports.contains(str_of(&get["port"], "probe port")),
                    "{name} {probe}"
                );
            }
            assert!(
                c["resources"]["requests"]["memory"].is_string(),
                "{name}: memory requested"
            );
            let cert = str_of(env["HALYARD_TLS_CERT"], "cert");
            if w["kind"] == "StatefulSet" {
                // A pod's stable name under its headless Service, as make-secrets.sh
                // names the certificates.
                let service = str_of(&w["spec"]["serviceName"], "serviceName");
                assert!(
                    headless.contains(service),
                    "{name}: no headless Service {service}"
                );
                assert_eq!(
                    cert,
                    format!("/secrets/$(POD_NAME).{service}.halyard.svc.pem")
                );
                assert_eq!(
                    str_of(env["HALYARD_ADVERTISE"], "advertise"),
                    format!("$(POD_NAME).{service}.halyard.svc:7071")
                );
                assert!(
                    script.contains(&format!("{service}-$i.{service}.$ns.svc")),
                    "make-secrets.sh certifies {service}'s pods"
                );
            } else {
                assert_eq!(cert, "/secrets/scheduler.halyard.svc.pem");
                assert!(script.contains("nodes=\"scheduler.$ns.svc\""));
            }
            roles.insert(
                name.to_string(),
                (role.to_string(), w["spec"]["replicas"].clone()),
            );
        }
    }
    assert_eq!(
        roles["scheduler"],
        ("scheduler".to_string(), Value::from(2))
    );
    assert_eq!(roles["executor"].0, "executor");
    // Every disruption budget covers a workload.
    for pdb in of_kind("PodDisruptionBudget") {
        let wanted = &pdb["spec"]["selector"]["matchLabels"];
        assert!(
            workloads
                .iter()
                .any(|w| &w["spec"]["template"]["metadata"]["labels"] == wanted),
            "{pdb}"
        );
    }
    assert!(script.contains("ns=halyard") && kustomization["namespace"] == "halyard");
}

#[test]
fn the_kubernetes_manifests_pass_the_api_schemas() {
    let Some(python) = python_with("kubernetes_validate", "pip install kubernetes-validate") else {
        return;
    };
    let dir = root().join("deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    let out = Command::new(python)
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(&files)
        .output()
        .unwrap();
    succeeded(&out);
}

#[test]
fn the_compose_file_passes_docker_compose_config() {
    if missing(&["docker-compose"], "docker-compose") {
        return;
    }
    let out = Command::new("docker-compose")
        .args([
            "-f",
            "deploy/compose.yaml",
            "--profile",
            "monitoring",
            "config",
            "--quiet",
        ])
        .current_dir(root())
        .output()
        .unwrap();
    succeeded(&out);
}

#[test]
fn the_image_copies_what_exists_and_checks_its_health_with_the_script() {
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    for line in dockerfile.lines().filter(|l| l.starts_with("COPY deploy/")) {
        let source = line.split_whitespace().nth(1).unwrap();
        assert!(root().join(source).is_file(), "{line}: no {source}");
    }
    assert!(
        dockerfile.contains("COPY deploy/docker/healthcheck.sh /usr/local/bin/halyard-healthcheck")
    );
    assert!(dockerfile.contains("CMD [\"halyard-healthcheck\"]"));
    assert!(
        dockerfile.contains("USER 10001"),
        "runs as a user, not root"
    );
    for bin in ["halyard", "halyard-s3-server"] {
        assert!(dockerfile.contains(&format!("--bin {bin}")), "builds {bin}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_check_script_passes_on_a_live_node_and_fails_on_a_dead_one() {
    if missing(&["curl"], "curl") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (cluster, _client) = standalone(tmp.path(), 1).await;
    let check = |listen: String| {
        Command::new("sh")
            .arg(root().join("deploy/docker/healthcheck.sh"))
            .env("HALYARD_LISTEN", listen)
            .env_remove("HALYARD_TLS_CERT")
            .output()
            .unwrap()
    };
    for addr in [cluster.scheduler.addr, cluster.executors[0].addr] {
        let out = check(addr.to_string());
        assert!(out.status.success(), "{addr}: {out:?}");
    }
    let out = check(format!("127.0.0.1:{}", free_port()));
    assert!(!out.status.success(), "a port nothing serves: {out:?}");
}
