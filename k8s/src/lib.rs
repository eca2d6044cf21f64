//! `fleet-k8s`: the Kubernetes pool provider (`provider = "kubernetes"`). Each pool is a
//! Deployment whose replica count the fleet's autoscaler owns through the scale subresource;
//! the pool's pods, found by their `fleet.io/…` labels, are its machines.
//!
//! Beneath the provider ([`provider`]), the API layer it stands on: reading and writing a Deployment's
//! scale with optimistic concurrency (a write carries the resourceVersion it read and is
//! retried on 409 Conflict), and listing a pool's pods by label selector. It is tested against
//! the test kit's fake API server (`fleet_testkit::kube_api`), which follows the real API's
//! rules for these calls.

pub mod provider;

pub use provider::KubernetesProvider;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v1::{Scale, ScaleSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};

/// Why a Kubernetes call failed.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubernetes: {0}")]
    Api(#[from] kube::Error),
    #[error("kubernetes: {what} still conflicts after {attempts} attempts")]
    Conflicts { what: String, attempts: u32 },
}

/// Attempts of a read-modify-write before giving up on conflicts.
const CONFLICT_ATTEMPTS: u32 = 5;

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// A Deployment's replica count.
pub async fn replicas(
    client: &kube::Client,
    namespace: &str,
    deployment: &str,
) -> Result<i32, KubeError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let scale = api.get_scale(deployment).await?;
    Ok(scale.spec.and_then(|s| s.replicas).unwrap_or(0))
}

/// Changes a Deployment's replica count by `delta` (never below 0) as one read-modify-write of
/// its scale: the write carries the resourceVersion it read, so a concurrent change makes it
/// fail with 409 and it is read and tried again. Returns the new count.
pub async fn change_replicas(
    client: &kube::Client,
    namespace: &str,
    deployment: &str,
    delta: i32,
) -> Result<i32, KubeError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    for attempt in 1..=CONFLICT_ATTEMPTS {
        let current = api.get_scale(deployment).await?;
        let now = current.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        let want = (now + delta).max(0);
        let scale = Scale {
            metadata: current.metadata.clone(),
            spec: Some(ScaleSpec {
                replicas: Some(want),
            }),
            status: None,
        };
        match api
            .replace_scale(deployment, &PostParams::default(), &scale)
            .await
        {
            Ok(_) => return Ok(want),
            Err(e) if is_conflict(&e) => {
                tracing::debug!(deployment, attempt, "scale write conflicted; reading again");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(KubeError::Conflicts {
        what: format!("the scale of deployment {namespace}/{deployment}"),
        attempts: CONFLICT_ATTEMPTS,
    })
}

/// The pods matching a label selector (`k=v,k2=v2`), Terminating ones included.
pub async fn pods(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
) -> Result<Vec<Pod>, KubeError> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    Ok(api
        .list(&ListParams::default().labels(selector))
        .await?
        .items)
}
