//! Pool providers: what turns "this pool needs a node" into a running machine, and back. The
//! provider's list is the truth for which machines exist (DESIGN.md): the scaler matches it with
//! the registry by node id (each machine is launched with the node id the controller minted)
//! and by machine id (each node says in its Hello which machine it is in).
//!
//! Only the local process provider exists so far (`fleet up`, or `provider = "local"`); EC2 and
//! Kubernetes come in their own crates.

pub mod local;

use fleet_core::autoscale::{Machine, PoolKey};
use fleet_proto::{MachineId, Market, NodeId};

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused or could not carry out the call.
    #[error("{provider} provider: {message}")]
    Failed {
        provider: &'static str,
        message: String,
    },
    /// The call took longer than `autoscale.provider_timeout_secs`.
    #[error("{provider} provider: {call} timed out")]
    Timeout {
        provider: &'static str,
        call: &'static str,
    },
}

/// One node to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRequest {
    pub pool: PoolKey,
    /// The id the node will say Hello with (minted by the autoscaler).
    pub node: NodeId,
    pub zone: String,
    /// Capacity units the node offers.
    pub capacity: u64,
    /// The market to buy the machine on (a provider without markets ignores it).
    pub market: Market,
}

/// Launches, lists and terminates the machines of pools.
#[async_trait::async_trait]
pub trait PoolProvider: Send + Sync {
    /// The provider's name in `[[pools]] provider = …`.
    fn name(&self) -> &'static str;

    /// Starts one machine running one node. Idempotent by node id: asked again for a node
    /// whose machine exists, it returns that machine (a restarted controller re-issues the
    /// launches it had decided, never knowing whether they were carried out).
    async fn launch(&self, request: LaunchRequest) -> Result<Machine, ProviderError>;

    /// Just before a terminate in `pool`: the live sessions on each of the pool's machines
    /// (from the nodes' reports), for a provider whose platform may also choose machines to
    /// remove on its own (a Kubernetes ReplicaSet ranks pods by their deletion cost). Most
    /// providers need nothing.
    async fn removal_costs(
        &self,
        _pool: &PoolKey,
        _sessions: &[(MachineId, u32)],
    ) -> Result<(), ProviderError> {
        Ok(())
    }

    /// Stops a machine (its node first gets SIGTERM where the provider can send one).
    async fn terminate(&self, machine: &MachineId) -> Result<(), ProviderError>;

    /// The machines of a pool that exist now.
    async fn list(&self, pool: &PoolKey) -> Result<Vec<Machine>, ProviderError>;

    /// Stops every machine this provider started (the local provider, at shutdown); cloud
    /// providers leave their machines to the next controller.
    async fn shutdown(&self) {}
}

/// The machine id of a node launched by a provider that names machines after their nodes.
pub fn machine_of(node: &NodeId) -> MachineId {
    MachineId::parse(node.as_str())
        .unwrap_or_else(|_| unreachable!("node ids and machine ids share their rule"))
}
