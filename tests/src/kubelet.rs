//! A eu-west-1 media pool on the test kit's fake Kubernetes API server, for end-to-end tests:
//! the fake with the pool's Deployment, the controller config of that pool, and a kubelet that
//! plays the pods with real media-node processes of namespace `fleet`, started through a test
//! controller (so they report to it and its peers).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use fleet_testkit::Proc;
use fleet_testkit::kube_api::{FakeKubeApi, Phase};

use crate::Controller;

/// A fake API server holding the pool's Deployment `media-eu-west-1` (cluster `e2e`), at 0
/// replicas, its pods with `grace_secs` of termination grace.
pub async fn fake_with_empty_pool(grace_secs: u64) -> FakeKubeApi {
    let api = FakeKubeApi::start().await;
    let labels = [
        ("fleet.io/cluster", "e2e"),
        ("fleet.io/pool", "eu-west-1.media"),
    ];
    api.add_deployment("fleet", "media-eu-west-1", &labels, 0, grace_secs);
    api
}

/// The controller config of that pool (16 units a node, no idle buffer, quick to scale down),
/// with `bounds` (`min = …` and `max = …` lines).
pub fn pool_toml(api: &FakeKubeApi, bounds: &str, scale_down_window_secs: u64) -> String {
    format!(
        r#"
[autoscale]
tick_ms = 300
[[pools]]
region = "eu-west-1"
kind = "media"
provider = "kubernetes"
node_capacity = 16
{bounds}
buffer_sessions = 0
min_node_age_secs = 0
scale_down_window_secs = {scale_down_window_secs}
[providers.kubernetes]
cluster = "e2e"
[[providers.kubernetes.pools]]
region = "eu-west-1"
kind = "media"
api_url = "{url}"
namespace = "fleet"
deployment = "media-eu-west-1"
"#,
        url = api.url
    )
}

/// Plays the kubelet: a media-node process for each new pod (its name is its node id and
/// machine), the pod Running once started. A pod that starts Terminating gets SIGTERM once, as
/// the kubelet sends it when the grace period starts; a pod gone (its grace over) loses its
/// process (SIGKILL).
pub struct Kubelet {
    pub procs: HashMap<String, Proc>,
    signalled: HashSet<String>,
    grace_secs: u64,
}

impl Kubelet {
    /// A kubelet whose nodes drain for `grace_secs` (the pods' grace).
    pub fn new(grace_secs: u64) -> Kubelet {
        Kubelet {
            procs: HashMap::new(),
            signalled: HashSet::new(),
            grace_secs,
        }
    }

    pub fn sync(&mut self, c: &Controller, api: &FakeKubeApi) {
        let pods = api.pods("fleet");
        self.procs.retain(|name, proc| {
            let Some(pod) = pods.iter().find(|p| &p.name == name) else {
                proc.kill();
                return false;
            };
            if pod.terminating() && self.signalled.insert(name.clone()) {
                proc.signal(libc::SIGTERM);
            }
            true
        });
        for p in pods.iter().filter(|p| !p.terminating()) {
            if self.procs.contains_key(&p.name) {
                continue;
            }
            let grace = self.grace_secs.to_string();
            let proc = c
                .node_in_machine(
                    "media-node",
                    &p.name,
                    "eu-west-1",
                    "eu-west-1a",
                    &p.name,
                    16,
                    &["--drain-grace-secs", &grace],
                )
                .unwrap();
            api.set_pod("fleet", &p.name, "node-a", Phase::Running, true);
            self.procs.insert(p.name.clone(), proc);
        }
    }

    /// Syncs until the pool has `n` serving media nodes.
    pub async fn until_serving(&mut self, c: &Controller, api: &FakeKubeApi, n: usize) {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            self.sync(c, api);
            let nodes = c.nodes().await.unwrap_or_default();
            let serving = nodes
                .iter()
                .filter(|n| n["kind"] == "media" && n["state"] == "serving")
                .count();
            if serving == n {
                return;
            }
            assert!(
                Instant::now() < end,
                "not {n} serving pods: {:?}",
                api.pods("fleet")
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}
