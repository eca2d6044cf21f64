//! The Kubernetes manifests (`deploy/kubernetes`) agree with the code they run. Each region's
//! overlay is built with `kubectl kustomize` (the pinned kubectl `scripts/test.sh` installs in
//! `.venv-deploy`, else the one on the PATH) and checked against the owners of what both sides
//! must share: the provider's label keys, the ports and probe paths of `fleet_proto::deploy`,
//! the node binaries' own flags (every `MEDIA_NODE_*` / `TURN_NODE_*` variable is a real one),
//! the controller's config parser (the home overlay's `fleet.toml` with its secrets set as the
//! Deployment sets them), the pools' drain deadline, and the image version.
//! (`scripts/check-deploy.py` validates the same builds against the Kubernetes schemas and
//! checkov.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::CommandFactory;
use fleet_controller::config::Config;
use fleet_core::autoscale::PoolKey;
use fleet_k8s::provider::labels;
use fleet_proto::deploy;
use fleet_proto::{NodeKind, RegionId};
use serde_json::Value;

const HOME: &str = "eu-west-1";
/// The controllers of the home overlay (one leads, one stands by).
const CONTROLLERS: usize = 2;
const REGIONS: [&str; 3] = ["eu-west-1", "us-east-1", "ap-south-1"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn kubectl() -> PathBuf {
    let pinned = root().join(".venv-deploy/bin/kubectl");
    if pinned.exists() {
        return pinned;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("kubectl"))
            .find(|p| p.exists())
    });
    on_path.unwrap_or_else(|| {
        panic!("no kubectl: run scripts/test.sh once (it installs one in .venv-deploy)")
    })
}

/// The objects an overlay builds to.
fn build(region: &str) -> Vec<Value> {
    build_dir(&root().join("deploy/kubernetes/overlays").join(region))
}

/// The objects a kustomization builds to.
fn build_dir(dir: &Path) -> Vec<Value> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(doc).expect("yaml");
            serde_json::to_value(v).expect("as json")
        })
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// The plain env values of a container (those from a Secret or the downward API as `<from>`).
fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("name").to_owned();
            let value = match e.get("value") {
                Some(v) => v.as_str().expect("string value").to_owned(),
                None => "<from>".to_owned(),
            };
            (name, value)
        })
        .collect()
}

fn port_named(container: &Value, name: &str) -> u16 {
    container["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no port {name}")) as u16
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr}"))
}

/// Every environment variable a node binary reads.
fn node_env_names(kind: NodeKind) -> BTreeSet<String> {
    let command = match kind {
        NodeKind::Media => media_node::Args::command(),
        NodeKind::Turn => turn_node::Args::command(),
    };
    fleet_node::with_env_prefix(command, kind)
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

/// The home overlay's fleet.toml, parsed as the controller parses it, with the Deployment's
/// `FLEET__…` variables set (its secrets to placeholders of the right shape).
fn home_config(objects: &[Value]) -> Config {
    let config_map = objects
        .iter()
        .find(|o| {
            o["kind"] == "ConfigMap"
                && o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with("fleet-config"))
        })
        .expect("the fleet-config ConfigMap");
    let text = config_map["data"]["fleet.toml"]
        .as_str()
        .expect("fleet.toml");
    let controller = &find(objects, "StatefulSet", "fleet-controller")["spec"]["template"]["spec"]
        ["containers"][0];
    let env: Vec<(String, String)> = env_of(controller)
        .into_iter()
        .filter(|(k, _)| k.starts_with("FLEET__"))
        .map(|(k, v)| {
            let v = match (k.as_str(), v.as_str()) {
                ("FLEET__AUTH__API_KEYS", "<from>") => {
                    r#"[{kid="app", secret="placeholder-secret-0123456789"}]"#.to_owned()
                }
                ("FLEET__STORE__URL", "<from>") => "postgres://fleet@db.example.com/fleet".into(),
                (_, "<from>") => "placeholder-secret-0123456789".to_owned(),
                _ => v,
            };
            (k, v)
        })
        .collect();
    Config::from_toml(text, env).expect("the home overlay's fleet.toml is a valid config")
}

#[test]
fn every_overlay_builds_and_agrees_with_the_code() {
    let home = build(HOME);
    let config = home_config(&home);
    let k8s = config
        .providers
        .kubernetes
        .as_ref()
        .expect("[providers.kubernetes]");
    let setups: BTreeMap<PoolKey, _> = config.pool_setups().expect("pools").into_iter().collect();
    let image = format!("registry.example.com/fleet:{}", env!("CARGO_PKG_VERSION"));

    for region in REGIONS {
        let objects = if region == HOME {
            home.clone()
        } else {
            build(region)
        };
        let mut scaled = BTreeSet::new();
        for kind in [NodeKind::Media, NodeKind::Turn] {
            let key = PoolKey {
                region: RegionId::parse(region).unwrap(),
                kind,
            };
            let at = format!("{region} {kind}");
            let pool = k8s
                .pools
                .iter()
                .find(|p| p.key() == key)
                .unwrap_or_else(|| panic!("{at}: no [[providers.kubernetes.pools]] entry"));
            assert_eq!(
                pool.context.is_none(),
                region == HOME,
                "{at}: in-cluster at home, a context elsewhere"
            );
            let setup = &setups[&key];
            assert_eq!(setup.provider, "kubernetes", "{at}");
            let d = find(&objects, "Deployment", &pool.deployment);
            assert_eq!(d["metadata"]["namespace"], pool.namespace.as_str(), "{at}");
            scaled.insert(pool.deployment.clone());

            // The labels the provider lists pods by.
            let pod = &d["spec"]["template"];
            let pod_labels = str_map(&pod["metadata"]["labels"]);
            let want = [
                (labels::CLUSTER, k8s.cluster.clone()),
                (labels::POOL, labels::pool_value(&key)),
                (labels::REGION, region.to_owned()),
                (labels::KIND, kind.as_str().to_owned()),
            ];
            for (k, v) in &want {
                assert_eq!(pod_labels.get(*k), Some(v), "{at}: pod label {k}");
            }
            let selector = str_map(&d["spec"]["selector"]["matchLabels"]);
            for k in [labels::CLUSTER, labels::POOL] {
                assert_eq!(selector.get(k), pod_labels.get(k), "{at}: selector {k}");
            }

            // Ports, probes, scrape, drain.
            let spec = &pod["spec"];
            let c = &spec["containers"][0];
            assert_eq!(c["image"], image.as_str(), "{at}");
            let env = env_of(c);
            let prefix = match kind {
                NodeKind::Media => "MEDIA_NODE",
                NodeKind::Turn => "TURN_NODE",
            };
            let names = node_env_names(kind);
            for name in env.keys().filter(|n| n.starts_with(prefix)) {
                assert!(names.contains(name), "{at}: {name} is no flag of the node");
            }
            let var = |flag: &str| {
                env.get(&format!("{prefix}_{flag}"))
                    .unwrap_or_else(|| panic!("{at}: no {prefix}_{flag}"))
                    .clone()
            };
            assert_eq!(var("REGION"), region, "{at}");
            assert_eq!(var("NODE_ID"), "<from>", "{at}: the pod's name");
            assert_eq!(var("MACHINE_ID"), "<from>", "{at}: the pod's name");
            let controllers = var("CONTROLLER");
            let controllers: Vec<&str> = controllers.split(',').collect();
            assert_eq!(
                controllers.len(),
                CONTROLLERS,
                "{at}: every controller's link"
            );
            for c in controllers {
                assert_eq!(port_of(c), deploy::LINK_UDP, "{at}");
            }
            assert_eq!(port_of(&var("HTTP_LISTEN")), deploy::NODE_HTTP_TCP, "{at}");
            assert_eq!(port_named(c, "http"), deploy::NODE_HTTP_TCP, "{at}");
            match kind {
                NodeKind::Media => {
                    assert_eq!(var("MEDIA_PORT"), deploy::MEDIA_UDP.to_string());
                    assert_eq!(port_named(c, "media"), deploy::MEDIA_UDP);
                    // ICE-TCP: the same port number over TCP.
                    assert_eq!(port_named(c, "media-tcp"), deploy::MEDIA_UDP);
                    // Every other I/O worker's port, over UDP and TCP.
                    for i in 1..deploy::MEDIA_PORTS {
                        let port = deploy::MEDIA_UDP + i;
                        assert_eq!(port_named(c, &format!("media-{i}")), port);
                        assert_eq!(port_named(c, &format!("media-tcp-{i}")), port);
                    }
                }
                NodeKind::Turn => {
                    assert_eq!(var("TURN_PORT"), deploy::TURN.to_string());
                    assert_eq!(port_named(c, "turn-udp"), deploy::TURN);
                    assert_eq!(var("RELAY_MIN_PORT"), deploy::RELAY_MIN.to_string());
                    assert_eq!(var("RELAY_MAX_PORT"), deploy::RELAY_MAX.to_string());
                }
            }
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], deploy::READYZ);
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], deploy::HEALTHZ);
            for probe in ["readinessProbe", "livenessProbe"] {
                assert_eq!(c[probe]["httpGet"]["port"], "http", "{at}: {probe}");
            }
            let scrape = str_map(&pod["metadata"]["annotations"]);
            assert_eq!(
                scrape["prometheus.io/port"],
                deploy::NODE_HTTP_TCP.to_string()
            );
            assert_eq!(scrape["prometheus.io/path"], deploy::METRICS);
            let grace = spec["terminationGracePeriodSeconds"]
                .as_u64()
                .expect("grace");
            assert_eq!(var("DRAIN_GRACE_SECS"), grace.to_string(), "{at}");
            assert_eq!(
                grace, setup.policy.drain_deadline_secs,
                "{at}: the pod's grace is the pool's drain deadline"
            );
            assert_eq!(spec["hostNetwork"], true, "{at}");
            assert_eq!(spec["automountServiceAccountToken"], false, "{at}");
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
            assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
            let pdb = find(&objects, "PodDisruptionBudget", kind.as_str());
            let pdb_selects = str_map(&pdb["spec"]["selector"]["matchLabels"]);
            assert!(
                pdb_selects
                    .iter()
                    .all(|(k, v)| pod_labels.get(k) == Some(v)),
                "{at}: the PDB selects the pool's pods"
            );
        }

        // The controller's role: the scale of exactly these Deployments, and pods.
        let role = find(&objects, "Role", "fleet-pool-scaler");
        let scale_rule = role["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resources"][0] == "deployments/scale")
            .expect("a deployments/scale rule");
        let names: BTreeSet<String> = scale_rule["resourceNames"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names, scaled, "{region}: the role scales exactly its pools");
        for rule in role["rules"].as_array().unwrap() {
            assert!(
                !rule.to_string().contains('*'),
                "{region}: no wildcard in {rule}"
            );
        }
    }

    // The controllers: on the shared store, one link Service each, a disruption budget.
    let set = find(&home, "StatefulSet", "fleet-controller");
    assert_eq!(set["spec"]["replicas"], CONTROLLERS as u64);
    assert!(
        config.store.shared(),
        "the controllers share a PostgreSQL store"
    );
    assert!(config.autoscale.store.is_none());
    for i in 0..CONTROLLERS {
        let link = find(&home, "Service", &format!("fleet-link-{i}"));
        assert_eq!(link["spec"]["ports"][0]["port"], deploy::LINK_UDP);
        assert_eq!(link["spec"]["ports"][0]["protocol"], "UDP");
        assert_eq!(
            link["spec"]["selector"]["statefulset.kubernetes.io/pod-name"],
            format!("fleet-controller-{i}").as_str()
        );
    }
    let pdb = find(&home, "PodDisruptionBudget", "fleet-controller");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let advertise = config.api.advertise.as_deref().expect("api.advertise");
    assert_eq!(port_of(advertise), deploy::API_TCP);
    // The controller listens where its Services and probes point.
    let ctl = &set["spec"]["template"]["spec"];
    let c = &ctl["containers"][0];
    assert_eq!(c["image"], image.as_str());
    assert_eq!(config.api.listen.port(), deploy::API_TCP);
    assert_eq!(config.link.listen.port(), deploy::LINK_UDP);
    assert_eq!(port_named(c, "api"), deploy::API_TCP);
    assert_eq!(port_named(c, "link"), deploy::LINK_UDP);
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], deploy::READYZ);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], deploy::HEALTHZ);
    let api = find(&home, "Service", "fleet-api");
    assert_eq!(api["spec"]["ports"][0]["port"], deploy::API_TCP);
    // Its files are where its volumes are mounted.
    let mounts: BTreeMap<String, String> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_owned(),
                m["mountPath"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for file in [&config.link.cert_file, &config.link.key_file] {
        let file = file.as_ref().expect("the link's certificate files");
        assert!(file.starts_with(&mounts["link-tls"]), "{file:?}");
    }
    assert_eq!(
        c["args"],
        serde_json::json!([
            "serve",
            "--config",
            format!("{}/fleet.toml", mounts["config"])
        ])
    );
}

/// The image is built with the toolchain the workspace declares.
#[test]
fn the_containerfile_builds_with_the_workspace_toolchain() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("rust-version");
    let file = std::fs::read_to_string(root().join("deploy/container/Containerfile")).unwrap();
    assert!(
        file.contains(&format!("FROM docker.io/library/rust:{version}-")),
        "the build stage uses rust {version}"
    );
    assert!(file.contains("USER 65532:65532"), "non-root");
    assert!(file.contains("cargo build --release --locked --bin fleet"));
}

/// The loadsim Job: an Indexed Job whose pod i runs shard i/K of one run, K being its
/// completions and parallelism; its summary on standard output for `fleet loadsim merge`; the
/// tokens from a Secret, never on the command line; the fleet's own image.
#[test]
fn the_loadsim_job_runs_one_shard_per_pod() {
    let objects = build_dir(&root().join("deploy/kubernetes/loadsim"));
    let job = find(&objects, "Job", "loadsim");
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let k = spec["completions"].as_u64().expect("completions");
    assert_eq!(
        spec["parallelism"].as_u64(),
        Some(k),
        "one pod per shard at once"
    );
    assert_eq!(
        spec["backoffLimit"], 0,
        "a retried shard would double its sessions"
    );
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args.first(), Some(&"loadsim"));
    assert!(
        args.contains(&format!("--shard=$(JOB_COMPLETION_INDEX)/{k}").as_str()),
        "{args:?}"
    );
    assert!(args.contains(&"--json=-"), "{args:?}");
    assert!(
        !args.iter().any(|a| a.contains("token")),
        "tokens go by environment: {args:?}"
    );
    let env = env_of(container);
    assert!(env.contains_key("FLEET_API"), "{env:?}");
    for (var, key) in [
        ("FLEET_CLIENT_TOKEN", "client-token"),
        ("FLEET_ADMIN_TOKEN", "admin-token"),
    ] {
        let from = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == var)
            .map(|e| &e["valueFrom"]["secretKeyRef"])
            .unwrap_or_else(|| panic!("{var}"));
        assert_eq!(from["name"], "fleet-loadsim", "{var}");
        assert_eq!(from["key"], key, "{var}");
    }
    let home = build(HOME);
    let media = find(&home, "Deployment", "media");
    assert_eq!(
        container["image"], media["spec"]["template"]["spec"]["containers"][0]["image"],
        "the same image as the fleet"
    );
}
