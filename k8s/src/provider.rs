//! The Kubernetes [`PoolProvider`]: a pool is a Deployment whose replica count the fleet's
//! autoscaler owns; its machines are the Deployment's pods, found by their labels
//! ([`labels`]), each pod's name being its node's id (the Deployment passes it to the node
//! through the downward API).
//!
//! - **Launch**: one more replica (a read-modify-write of the scale, retried on conflicts),
//!   then the new pod is claimed: the first pod of the pool not seen before and not claimed by
//!   another launch, annotated `fleet.io/launch=<the minted node id>`. A launch asked again for
//!   the same node id (a retry, a restarted controller) finds its annotated pod instead of
//!   scaling again. The scaler then tracks the launch under the pod's name.
//! - **Terminate** (a drained, empty pod): its `pod-deletion-cost` is set to the lowest value,
//!   the pod is deleted, and the replica count is lowered by one. Deleting first is what makes
//!   it safe against the ReplicaSet's own choice: between the two writes the ReplicaSet
//!   replaces the deleted pod, and that replacement (not yet scheduled, or Pending) is what it
//!   ranks first when the count goes down; lowering the count first would let it pick any pod,
//!   live calls included. A pod already Terminating or gone is done.
//! - **Removal costs**: before a terminate, every other pod of the pool gets its live session
//!   count as its `pod-deletion-cost` (written only where it changed), so that whatever else
//!   lowers the replica count (an operator's `kubectl scale`, a misconfigured HPA) removes the
//!   emptiest pods first. Not written on every report: the Kubernetes docs warn against
//!   updating it as often as a metric changes.
//! - **List**: the pods with the pool's labels, Terminating ones included (they still run,
//!   draining). A pod's zone is its Kubernetes node's `topology.kubernetes.io/zone` label (read
//!   once per node: nodes do not move).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fleet_controller::provider::{LaunchRequest, PoolProvider, ProviderError};
use fleet_controller::provider_config::{KubernetesPoolConfig, KubernetesProviderConfig};
use fleet_core::autoscale::{Machine, PoolKey};
use fleet_proto::{MachineId, Market, NodeId};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use tokio::sync::Mutex;

use crate::{change_replicas, pods};

const NAME: &str = "kubernetes";

/// The label keys of every fleet pod, and the annotation a launch claims its pod with.
pub mod labels {
    use fleet_core::autoscale::PoolKey;

    pub const CLUSTER: &str = "fleet.io/cluster";
    /// `<region>.<kind>` (label values allow no '/').
    pub const POOL: &str = "fleet.io/pool";
    pub const REGION: &str = "fleet.io/region";
    pub const KIND: &str = "fleet.io/kind";
    /// The node id the launch that claimed the pod minted.
    pub const LAUNCH: &str = "fleet.io/launch";
    /// What the ReplicaSet deletes first: the lowest value.
    pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";
    /// A Kubernetes node's zone (set by its cloud provider).
    pub const ZONE: &str = "topology.kubernetes.io/zone";

    /// The `fleet.io/pool` value of a pool.
    pub fn pool_value(pool: &PoolKey) -> String {
        format!("{}.{}", pool.region, pool.kind.as_str())
    }
}

/// How long a launch waits for the ReplicaSet's new pod.
const POD_WAIT: Duration = Duration::from_secs(20);

fn failed(message: impl std::fmt::Display) -> ProviderError {
    ProviderError::Failed {
        provider: NAME,
        message: message.to_string(),
    }
}

/// The Kubernetes provider.
pub struct KubernetesProvider {
    config: KubernetesProviderConfig,
    clients: Mutex<BTreeMap<PoolKey, kube::Client>>,
    /// Per pool: its launches one at a time, so each claims its own new pod (pools launch
    /// independently).
    launching: BTreeMap<PoolKey, Mutex<()>>,
    /// Kubernetes node name → its zone ("" when it has none or cannot be read).
    zones: Mutex<HashMap<String, String>>,
}

impl KubernetesProvider {
    /// A provider for `config`.
    pub fn new(config: KubernetesProviderConfig) -> Arc<KubernetesProvider> {
        let launching = config
            .pools
            .iter()
            .map(|p| (p.key(), Mutex::new(())))
            .collect();
        Arc::new(KubernetesProvider {
            config,
            clients: Mutex::new(BTreeMap::new()),
            launching,
            zones: Mutex::new(HashMap::new()),
        })
    }

    fn pool(&self, key: &PoolKey) -> Result<&KubernetesPoolConfig, ProviderError> {
        self.config
            .pools
            .iter()
            .find(|p| &p.key() == key)
            .ok_or_else(|| {
                failed(format!(
                    "no [[providers.kubernetes.pools]] entry for {} {}",
                    key.region, key.kind
                ))
            })
    }

    /// The client of a pool's cluster: its api_url, its kubeconfig context, or else the cluster
    /// the controller runs in (in a pod: its service account; elsewhere: the kubeconfig's
    /// current context). In a pod, `KUBECONFIG` may then hold only the other regions' clusters.
    async fn client(&self, pool: &KubernetesPoolConfig) -> Result<kube::Client, ProviderError> {
        let key = pool.key();
        if let Some(c) = self.clients.lock().await.get(&key) {
            return Ok(c.clone());
        }
        let config = match (&pool.api_url, &pool.context) {
            (Some(url), _) => {
                kube::Config::new(url.parse().map_err(|e| failed(format!("api_url: {e}")))?)
            }
            (None, Some(context)) => {
                let options = kube::config::KubeConfigOptions {
                    context: Some(context.clone()),
                    ..Default::default()
                };
                kube::Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| failed(format!("kubeconfig context {context}: {e}")))?
            }
            (None, None) if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
                kube::Config::incluster().map_err(|e| failed(format!("in-cluster config: {e}")))?
            }
            (None, None) => kube::Config::infer()
                .await
                .map_err(|e| failed(format!("no in-cluster config and no kubeconfig: {e}")))?,
        };
        let client = kube::Client::try_from(config).map_err(|e| failed(format!("client: {e}")))?;
        self.clients.lock().await.insert(key, client.clone());
        Ok(client)
    }

    fn selector(&self, pool: &PoolKey) -> String {
        format!(
            "{}={},{}={}",
            labels::CLUSTER,
            self.config.cluster,
            labels::POOL,
            labels::pool_value(pool)
        )
    }

    /// The pool's pods.
    async fn pool_pods(
        &self,
        key: &PoolKey,
    ) -> Result<(kube::Client, &KubernetesPoolConfig, Vec<Pod>), ProviderError> {
        let pool = self.pool(key)?;
        let client = self.client(pool).await?;
        let found = pods(&client, &pool.namespace, &self.selector(key))
            .await
            .map_err(failed)?;
        Ok((client, pool, found))
    }

    /// The zone of the Kubernetes node a pod runs on ("" for a pod not yet scheduled, or a
    /// node without the label; a node that cannot be read is asked again next time).
    async fn zone_of(&self, client: &kube::Client, pod: &Pod) -> String {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            return String::new();
        };
        if let Some(z) = self.zones.lock().await.get(&node) {
            return z.clone();
        }
        let api: Api<Node> = Api::all(client.clone());
        match api.get(&node).await {
            Ok(n) => {
                let zone = n
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(labels::ZONE))
                    .cloned()
                    .unwrap_or_default();
                self.zones.lock().await.insert(node, zone.clone());
                zone
            }
            Err(e) => {
                tracing::debug!(node, error = %e, "cannot read the zone of a kubernetes node");
                String::new()
            }
        }
    }

    /// The machine a pod is, with its zone.
    async fn machine(&self, client: &kube::Client, pod: &Pod) -> Option<Machine> {
        let mut m = machine_of(pod)?;
        m.zone = self.zone_of(client, pod).await;
        Some(m)
    }
}

fn name_of(pod: &Pod) -> Option<&str> {
    pod.metadata.name.as_deref()
}

fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// The machine a pod is: its name is its node id and machine id.
fn machine_of(pod: &Pod) -> Option<Machine> {
    let name = name_of(pod)?;
    let launched_unix_ms = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| u64::try_from(t.0.as_millisecond()).ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_millis() as u64
        });
    Some(Machine {
        id: MachineId::parse(name).ok()?,
        node: NodeId::parse(name).ok()?,
        zone: String::new(),
        launched_unix_ms,
        market: Market::OnDemand,
    })
}

#[async_trait::async_trait]
impl PoolProvider for KubernetesProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn launch(&self, request: LaunchRequest) -> Result<Machine, ProviderError> {
        // The lock first: the pods seen before the scale-up must include every earlier claim.
        let lock = self.launching.get(&request.pool);
        let _one_at_a_time = match lock {
            Some(m) => m.lock().await,
            None => {
                self.pool(&request.pool)?;
                return Err(failed("no launch lock for the pool"));
            }
        };
        let (client, pool, before) = self.pool_pods(&request.pool).await?;
        // Asked again for a launch that already has its pod.
        let minted = request.node.as_str();
        if let Some(pod) = before
            .iter()
            .find(|p| annotation(p, labels::LAUNCH) == Some(minted))
            && let Some(m) = self.machine(&client, pod).await
        {
            return Ok(m);
        }
        let seen: HashSet<String> = before
            .iter()
            .filter_map(name_of)
            .map(str::to_owned)
            .collect();
        change_replicas(&client, &pool.namespace, &pool.deployment, 1)
            .await
            .map_err(failed)?;
        let api: Api<Pod> = Api::namespaced(client.clone(), &pool.namespace);
        let deadline = tokio::time::Instant::now() + POD_WAIT;
        loop {
            let now = pods(&client, &pool.namespace, &self.selector(&request.pool))
                .await
                .map_err(failed)?;
            let new = now.iter().find(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && name_of(p).is_some_and(|n| !seen.contains(n))
                    && annotation(p, labels::LAUNCH).is_none()
            });
            if let Some(pod) = new {
                let name = name_of(pod).unwrap_or_default().to_owned();
                let claim =
                    serde_json::json!({"metadata": {"annotations": {labels::LAUNCH: minted}}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&claim))
                    .await
                    .map_err(|e| failed(format!("claiming pod {name}: {e}")))?;
                tracing::info!(node = minted, pod = %name, "kubernetes pod launched");
                return self
                    .machine(&client, pod)
                    .await
                    .ok_or_else(|| failed(format!("pod name {name:?} is not a node id")));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(failed(format!(
                    "deployment {}/{} scaled up, but no new pod within {} s",
                    pool.namespace,
                    pool.deployment,
                    POD_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn removal_costs(
        &self,
        pool: &PoolKey,
        sessions: &[(MachineId, u32)],
    ) -> Result<(), ProviderError> {
        let (client, config, found) = self.pool_pods(pool).await?;
        let api: Api<Pod> = Api::namespaced(client, &config.namespace);
        let counts: HashMap<&str, u32> = sessions.iter().map(|(m, n)| (m.as_str(), *n)).collect();
        for pod in &found {
            let Some(name) = name_of(pod) else { continue };
            let Some(count) = counts.get(name) else {
                continue;
            };
            let cost = count.to_string();
            if pod.metadata.deletion_timestamp.is_some()
                || annotation(pod, labels::DELETION_COST) == Some(cost.as_str())
            {
                continue;
            }
            let patch =
                serde_json::json!({"metadata": {"annotations": {labels::DELETION_COST: cost}}});
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(|e| failed(format!("deletion cost of pod {name}: {e}")))?;
        }
        Ok(())
    }

    async fn terminate(&self, machine: &MachineId) -> Result<(), ProviderError> {
        for pool in &self.config.pools {
            let key = pool.key();
            let (client, pool, found) = self.pool_pods(&key).await?;
            let Some(pod) = found.iter().find(|p| name_of(p) == Some(machine.as_str())) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                return Ok(());
            }
            let api: Api<Pod> = Api::namespaced(client.clone(), &pool.namespace);
            let cheapest = serde_json::json!({"metadata": {"annotations": {labels::DELETION_COST: i32::MIN.to_string()}}});
            api.patch(
                machine.as_str(),
                &PatchParams::default(),
                &Patch::Merge(&cheapest),
            )
            .await
            .map_err(|e| failed(format!("pod {machine}: {e}")))?;
            api.delete(machine.as_str(), &DeleteParams::default())
                .await
                .map_err(|e| failed(format!("deleting pod {machine}: {e}")))?;
            change_replicas(&client, &pool.namespace, &pool.deployment, -1)
                .await
                .map_err(failed)?;
            tracing::info!(pod = %machine, "kubernetes pod removed and its deployment scaled down");
            return Ok(());
        }
        Ok(())
    }

    async fn list(&self, pool: &PoolKey) -> Result<Vec<Machine>, ProviderError> {
        let (client, _, found) = self.pool_pods(pool).await?;
        let mut machines = Vec::with_capacity(found.len());
        for pod in &found {
            if let Some(m) = self.machine(&client, pod).await {
                machines.push(m);
            }
        }
        Ok(machines)
    }
}
