//! A FAKE Kubernetes API server, for the Kubernetes pool provider's tests: no real API server can
//! run on these machines (no container runtime, no kind, no k3s). It is real HTTP, so the real
//! `kube` client (and the `fleet` binary, through a kubeconfig) talks to it, and it follows the
//! real API's semantics for exactly the calls the provider makes, and no more:
//!
//! - Deployments (`apps/v1`): GET, and their `scale` subresource (GET, PUT, PATCH with a merge
//!   or strategic merge patch). A ReplicaSet controller inside keeps each Deployment's active
//!   pods at its replica count, at once after every change.
//! - Pods (`v1`): GET one; LIST with a `labelSelector` of equality terms (`k=v`, `k==v`,
//!   `k!=v`, and `k` / `!k` for existence), comma-joined; PATCH of labels and annotations (merge
//!   patch: `null` removes a key); DELETE with `gracePeriodSeconds` (query or DeleteOptions body,
//!   else the pod's `terminationGracePeriodSeconds`): the pod gets a `deletionTimestamp` and
//!   stays Terminating for its grace period, then is gone. A Terminating pod is not active: the
//!   ReplicaSet replaces it if the replica count still wants it.
//! - Nodes (`v1`, cluster-scoped): GET one, with the labels a test gave it (its zone in
//!   `topology.kubernetes.io/zone`, as cloud providers label nodes).
//! - Every object carries a `resourceVersion` from one counter (as etcd's revision); a write
//!   whose body carries a `resourceVersion` other than the object's current one gets
//!   `409 Conflict` (a `Status` with reason `Conflict`), and changes nothing.
//! - When the ReplicaSet has too many pods it deletes the ones the real controller ranks first
//!   (`ActivePodsWithRanks` in kubernetes/pkg/controller): not yet on a node, then by phase
//!   (Pending, Unknown, Running), then not ready before ready, then the lower
//!   `controller.kubernetes.io/pod-deletion-cost`, then the newer.
//!
//! Not covered: watches, server-side apply, JSON patch, field selectors, pagination,
//! authentication (any bearer token is accepted), scheduling (a test puts pods on nodes and
//! makes them ready: [`FakeKubeApi::set_pod`]), and every other resource.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

/// The well-known label of a Kubernetes node's zone.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The annotation the ReplicaSet ranks pods by before deleting one.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// A pod's phase, as the fake's tests set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Unknown,
    Running,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Unknown => "Unknown",
            Phase::Running => "Running",
        }
    }
}

/// A pod as the fake keeps it.
#[derive(Debug, Clone)]
pub struct FakePod {
    pub name: String,
    pub namespace: String,
    pub deployment: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub node: Option<String>,
    pub phase: Phase,
    pub ready: bool,
    pub created: u64,
    pub grace_secs: u64,
    /// Set once deleted: when it is gone.
    pub terminating_until: Option<Instant>,
    deletion_timestamp: Option<String>,
    resource_version: u64,
    creation_timestamp: String,
}

impl FakePod {
    /// Deleted, and still in its grace period.
    pub fn terminating(&self) -> bool {
        self.terminating_until.is_some()
    }
}

#[derive(Debug, Clone)]
struct FakeDeployment {
    name: String,
    namespace: String,
    /// The pod template's labels (also the selector).
    labels: BTreeMap<String, String>,
    replicas: i64,
    grace_secs: u64,
    resource_version: u64,
    creation_timestamp: String,
}

#[derive(Default)]
struct Store {
    revision: u64,
    created: u64,
    deployments: BTreeMap<(String, String), FakeDeployment>,
    pods: BTreeMap<(String, String), FakePod>,
    /// Kubernetes nodes: name → (labels, resourceVersion).
    nodes: BTreeMap<String, (BTreeMap<String, String>, u64)>,
    /// Writes with a resourceVersion that get 409 as if someone else wrote first.
    conflicts_to_inject: usize,
    /// Every request, as `METHOD path`.
    log: Vec<String>,
}

/// The fake server.
pub struct FakeKubeApi {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    store: Arc<Mutex<Store>>,
}

fn lock(m: &Mutex<Store>) -> MutexGuard<'_, Store> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl FakeKubeApi {
    /// Starts a server on a loopback port.
    pub async fn start() -> FakeKubeApi {
        let store = Arc::new(Mutex::new(Store::default()));
        let app = Router::new()
            .route("/api/v1/namespaces/{ns}/pods", get(list_pods))
            .route("/api/v1/nodes/{name}", get(node))
            .route(
                "/api/v1/namespaces/{ns}/pods/{name}",
                get(pod).patch(pod).delete(pod),
            )
            .route(
                "/apis/apps/v1/namespaces/{ns}/deployments/{name}",
                get(deployment),
            )
            .route(
                "/apis/apps/v1/namespaces/{ns}/deployments/{name}/scale",
                get(scale).put(scale).patch(scale),
            )
            .fallback(|method: Method, uri: axum::http::Uri| async move {
                status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("the fake API server does not serve {method} {uri}"),
                )
            })
            .with_state(store.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind fake kube api");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let reaper = Arc::downgrade(&store);
        tokio::spawn(async move {
            while let Some(store) = reaper.upgrade() {
                reap(&mut lock(&store));
                drop(store);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        FakeKubeApi { url, store }
    }

    /// Adds a Deployment whose pods carry `labels`, with `replicas` pods at once (Pending, not
    /// on a node, not ready) and `grace_secs` of termination grace.
    pub fn add_deployment(
        &self,
        namespace: &str,
        name: &str,
        labels: &[(&str, &str)],
        replicas: i64,
        grace_secs: u64,
    ) {
        let mut s = lock(&self.store);
        s.revision += 1;
        let d = FakeDeployment {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            replicas,
            grace_secs,
            resource_version: s.revision,
            creation_timestamp: now_rfc3339(),
        };
        s.deployments
            .insert((namespace.to_owned(), name.to_owned()), d);
        reconcile(&mut s);
    }

    /// The pods of a namespace (Terminating ones included), oldest first.
    pub fn pods(&self, namespace: &str) -> Vec<FakePod> {
        let s = lock(&self.store);
        let mut pods: Vec<FakePod> = s
            .pods
            .values()
            .filter(|p| p.namespace == namespace)
            .cloned()
            .collect();
        pods.sort_by_key(|p| p.created);
        pods
    }

    /// A Deployment's replica count.
    pub fn replicas(&self, namespace: &str, name: &str) -> Option<i64> {
        lock(&self.store)
            .deployments
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|d| d.replicas)
    }

    /// Adds a Kubernetes node in a zone (labelled as cloud providers label theirs).
    pub fn add_node(&self, name: &str, zone: &str) {
        let mut s = lock(&self.store);
        s.revision += 1;
        let labels = BTreeMap::from([
            (ZONE_LABEL.to_owned(), zone.to_owned()),
            ("kubernetes.io/hostname".to_owned(), name.to_owned()),
        ]);
        let revision = s.revision;
        s.nodes.insert(name.to_owned(), (labels, revision));
    }

    /// Plays the kubelet: puts a pod on a node with a phase and readiness.
    pub fn set_pod(&self, namespace: &str, name: &str, node: &str, phase: Phase, ready: bool) {
        let mut s = lock(&self.store);
        s.revision += 1;
        let revision = s.revision;
        if let Some(p) = s.pods.get_mut(&(namespace.to_owned(), name.to_owned())) {
            p.node = Some(node.to_owned());
            p.phase = phase;
            p.ready = ready;
            p.resource_version = revision;
        }
    }

    /// Someone else deletes a pod (an eviction, a node drain): it terminates for its grace.
    pub fn evict(&self, namespace: &str, name: &str) {
        let mut s = lock(&self.store);
        delete_pod(&mut s, namespace, name, None);
        reconcile(&mut s);
    }

    /// The next `n` writes that carry a resourceVersion fail with 409, as when another client
    /// wrote the object in between.
    pub fn inject_conflicts(&self, n: usize) {
        lock(&self.store).conflicts_to_inject = n;
    }

    /// Every request so far, as `METHOD path` (query left out).
    pub fn log(&self) -> Vec<String> {
        lock(&self.store).log.clone()
    }
}

/// Removes the pods whose grace period is over.
fn reap(s: &mut Store) {
    let now = Instant::now();
    s.pods
        .retain(|_, p| p.terminating_until.is_none_or(|until| until > now));
}

/// Keeps every Deployment's active (not Terminating) pods at its replica count.
fn reconcile(s: &mut Store) {
    reap(s);
    let deployments: Vec<FakeDeployment> = s.deployments.values().cloned().collect();
    for d in deployments {
        let mut active: Vec<FakePod> = s
            .pods
            .values()
            .filter(|p| p.namespace == d.namespace && p.deployment == d.name && !p.terminating())
            .cloned()
            .collect();
        let want = usize::try_from(d.replicas.max(0)).unwrap_or(0);
        while active.len() < want {
            s.revision += 1;
            s.created += 1;
            let suffix: u32 = rand::random();
            let name = format!("{}-{:05x}", d.name, suffix & 0xfffff);
            let pod = FakePod {
                name: name.clone(),
                namespace: d.namespace.clone(),
                deployment: d.name.clone(),
                labels: d.labels.clone(),
                annotations: BTreeMap::new(),
                node: None,
                phase: Phase::Pending,
                ready: false,
                created: s.created,
                grace_secs: d.grace_secs,
                terminating_until: None,
                deletion_timestamp: None,
                resource_version: s.revision,
                creation_timestamp: now_rfc3339(),
            };
            active.push(pod.clone());
            s.pods.insert((d.namespace.clone(), name), pod);
        }
        if active.len() > want {
            // The ReplicaSet controller's ranking: the first ones go.
            active.sort_by_key(|p| {
                let phase = match p.phase {
                    Phase::Pending => 0,
                    Phase::Unknown => 1,
                    Phase::Running => 2,
                };
                let cost: i64 = p
                    .annotations
                    .get(POD_DELETION_COST)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                (
                    p.node.is_some(),
                    phase,
                    p.ready,
                    cost,
                    std::cmp::Reverse(p.created),
                )
            });
            for p in &active[..active.len() - want] {
                let (ns, name) = (p.namespace.clone(), p.name.clone());
                delete_pod(s, &ns, &name, None);
            }
        }
    }
}

/// Starts a pod's graceful deletion (no-op on a Terminating one). `None` if there is none.
fn delete_pod(s: &mut Store, ns: &str, name: &str, grace: Option<u64>) -> Option<FakePod> {
    s.revision += 1;
    let revision = s.revision;
    let p = s.pods.get_mut(&(ns.to_owned(), name.to_owned()))?;
    if p.terminating_until.is_none() {
        let grace = grace.unwrap_or(p.grace_secs);
        p.terminating_until = Some(Instant::now() + Duration::from_secs(grace));
        p.deletion_timestamp = Some(now_rfc3339());
        p.grace_secs = grace;
        p.resource_version = revision;
    }
    Some(p.clone())
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, axum::Json(body)).into_response()
}

fn not_found(what: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{what} \"{name}\" not found"),
    )
}

fn bad_request(message: &str) -> Response {
    status(StatusCode::BAD_REQUEST, "BadRequest", message)
}

fn labels_json(m: &BTreeMap<String, String>) -> Value {
    Value::Object(
        m.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
    )
}

async fn node(State(store): State<Arc<Mutex<Store>>>, Path(name): Path<String>) -> Response {
    let mut s = lock(&store);
    s.log.push(format!("GET /api/v1/nodes/{name}"));
    match s.nodes.get(&name) {
        Some((labels, revision)) => axum::Json(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "uid": format!("uid-{name}"),
                "resourceVersion": revision.to_string(),
                "labels": labels_json(labels),
            },
        }))
        .into_response(),
        None => not_found("nodes", &name),
    }
}

fn pod_json(p: &FakePod) -> Value {
    let mut metadata = json!({
        "name": p.name,
        "namespace": p.namespace,
        "uid": format!("uid-{}", p.name),
        "resourceVersion": p.resource_version.to_string(),
        "creationTimestamp": p.creation_timestamp,
        "labels": labels_json(&p.labels),
        "annotations": labels_json(&p.annotations),
        "ownerReferences": [{
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "name": format!("{}-rs", p.deployment),
            "uid": format!("uid-{}-rs", p.deployment),
            "controller": true,
        }],
    });
    if let Some(t) = &p.deletion_timestamp {
        metadata["deletionTimestamp"] = json!(t);
        metadata["deletionGracePeriodSeconds"] = json!(p.grace_secs);
    }
    let mut spec = json!({
        "containers": [{"name": "node", "image": "fleet"}],
        "terminationGracePeriodSeconds": p.grace_secs,
    });
    if let Some(n) = &p.node {
        spec["nodeName"] = json!(n);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": {
            "phase": p.phase.as_str(),
            "conditions": [{"type": "Ready", "status": if p.ready { "True" } else { "False" }}],
        },
    })
}

fn selector_string(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A Deployment's metadata, which its scale subresource shares.
fn deployment_metadata(d: &FakeDeployment) -> Value {
    json!({
        "name": d.name,
        "namespace": d.namespace,
        "uid": format!("uid-{}", d.name),
        "resourceVersion": d.resource_version.to_string(),
        "creationTimestamp": d.creation_timestamp,
    })
}

fn scale_json(d: &FakeDeployment) -> Value {
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": deployment_metadata(d),
        "spec": {"replicas": d.replicas},
        "status": {"replicas": d.replicas, "selector": selector_string(&d.labels)},
    })
}

fn deployment_json(d: &FakeDeployment, ready: usize) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": deployment_metadata(d),
        "spec": {
            "replicas": d.replicas,
            "selector": {"matchLabels": labels_json(&d.labels)},
            "template": {
                "metadata": {"labels": labels_json(&d.labels)},
                "spec": {
                    "containers": [{"name": "node", "image": "fleet"}],
                    "terminationGracePeriodSeconds": d.grace_secs,
                },
            },
        },
        "status": {"replicas": d.replicas, "readyReplicas": ready},
    })
}

/// One selector term.
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

fn parse_selector(s: &str) -> Result<Vec<Term>, String> {
    let mut terms = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let term = if let Some((k, v)) = part.split_once("!=") {
            Term::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==") {
            Term::Equals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once('=') {
            Term::Equals(k.trim().into(), v.trim().into())
        } else if let Some(k) = part.strip_prefix('!') {
            Term::Absent(k.trim().into())
        } else if part.contains([' ', '(', ')']) {
            return Err(format!(
                "unsupported selector term {part:?} (set-based terms are not faked)"
            ));
        } else {
            Term::Exists(part.into())
        };
        terms.push(term);
    }
    Ok(terms)
}

fn matches(terms: &[Term], labels: &BTreeMap<String, String>) -> bool {
    terms.iter().all(|t| match t {
        Term::Equals(k, v) => labels.get(k) == Some(v),
        Term::NotEquals(k, v) => labels.get(k) != Some(v),
        Term::Exists(k) => labels.contains_key(k),
        Term::Absent(k) => !labels.contains_key(k),
    })
}

async fn list_pods(
    State(store): State<Arc<Mutex<Store>>>,
    Path(ns): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut s = lock(&store);
    s.log.push(format!("GET /api/v1/namespaces/{ns}/pods"));
    reap(&mut s);
    let terms = match parse_selector(q.get("labelSelector").map_or("", String::as_str)) {
        Ok(t) => t,
        Err(e) => return bad_request(&e),
    };
    let mut items: Vec<&FakePod> = s
        .pods
        .values()
        .filter(|p| p.namespace == ns && matches(&terms, &p.labels))
        .collect();
    items.sort_by_key(|p| p.created);
    let body = json!({
        "apiVersion": "v1",
        "kind": "PodList",
        "metadata": {"resourceVersion": s.revision.to_string()},
        "items": items.into_iter().map(pod_json).collect::<Vec<_>>(),
    });
    axum::Json(body).into_response()
}

/// The `resourceVersion` a write body carries, if any.
fn precondition(body: &Value) -> Option<u64> {
    body.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
}

/// Whether a write with `wanted` (the body's resourceVersion) against an object at `current`
/// must be refused (stale, or a conflict the test injected).
fn conflicts(s: &mut Store, wanted: Option<u64>, current: u64) -> bool {
    let Some(wanted) = wanted else {
        return false;
    };
    if s.conflicts_to_inject > 0 {
        s.conflicts_to_inject -= 1;
        return true;
    }
    wanted != current
}

/// The body as JSON (`Null` when empty); the error says why it is not.
fn parse_body(body: &Bytes) -> Result<Value, String> {
    if body.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))
}

/// Applies a merge patch of string maps (`null` removes the key).
fn merge_strings(target: &mut BTreeMap<String, String>, patch: Option<&Map<String, Value>>) {
    for (k, v) in patch.into_iter().flatten() {
        match v {
            Value::Null => {
                target.remove(k);
            }
            Value::String(s) => {
                target.insert(k.clone(), s.clone());
            }
            other => {
                target.insert(k.clone(), other.to_string());
            }
        }
    }
}

async fn pod(
    State(store): State<Arc<Mutex<Store>>>,
    Path((ns, name)): Path<(String, String)>,
    method: Method,
    Query(q): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> Response {
    let mut s = lock(&store);
    s.log
        .push(format!("{method} /api/v1/namespaces/{ns}/pods/{name}"));
    reap(&mut s);
    let key = (ns.clone(), name.clone());
    let Some(current) = s.pods.get(&key).map(|p| p.resource_version) else {
        return not_found("pods", &name);
    };
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(&e),
    };
    match method {
        Method::GET => axum::Json(pod_json(&s.pods[&key])).into_response(),
        Method::PATCH => {
            if conflicts(&mut s, precondition(&body), current) {
                return conflict("pods", &name);
            }
            s.revision += 1;
            let revision = s.revision;
            let Some(p) = s.pods.get_mut(&key) else {
                return not_found("pods", &name);
            };
            let meta = body.get("metadata");
            merge_strings(
                &mut p.labels,
                meta.and_then(|m| m.get("labels"))
                    .and_then(Value::as_object),
            );
            merge_strings(
                &mut p.annotations,
                meta.and_then(|m| m.get("annotations"))
                    .and_then(Value::as_object),
            );
            p.resource_version = revision;
            axum::Json(pod_json(p)).into_response()
        }
        Method::DELETE => {
            let wanted = body
                .pointer("/preconditions/resourceVersion")
                .and_then(Value::as_str)
                .and_then(|v| v.parse().ok());
            if conflicts(&mut s, wanted, current) {
                return conflict("pods", &name);
            }
            let grace = q
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
                .or_else(|| body.get("gracePeriodSeconds").and_then(Value::as_u64));
            let Some(p) = delete_pod(&mut s, &ns, &name, grace) else {
                return not_found("pods", &name);
            };
            reconcile(&mut s);
            axum::Json(pod_json(&p)).into_response()
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "not faked",
        ),
    }
}

fn conflict(kind: &str, name: &str) -> Response {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {kind} \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again"
        ),
    )
}

async fn deployment(
    State(store): State<Arc<Mutex<Store>>>,
    Path((ns, name)): Path<(String, String)>,
) -> Response {
    let mut s = lock(&store);
    s.log.push(format!(
        "GET /apis/apps/v1/namespaces/{ns}/deployments/{name}"
    ));
    reap(&mut s);
    let Some(d) = s.deployments.get(&(ns.clone(), name.clone())) else {
        return not_found("deployments.apps", &name);
    };
    let ready = s
        .pods
        .values()
        .filter(|p| p.namespace == ns && p.deployment == name && p.ready && !p.terminating())
        .count();
    axum::Json(deployment_json(d, ready)).into_response()
}

async fn scale(
    State(store): State<Arc<Mutex<Store>>>,
    Path((ns, name)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut s = lock(&store);
    s.log.push(format!(
        "{method} /apis/apps/v1/namespaces/{ns}/deployments/{name}/scale"
    ));
    let key = (ns.clone(), name.clone());
    let Some(current) = s.deployments.get(&key).map(|d| d.resource_version) else {
        return not_found("deployments.apps", &name);
    };
    if method == Method::GET {
        return axum::Json(scale_json(&s.deployments[&key])).into_response();
    }
    if method == Method::PATCH {
        let kind = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !(kind.starts_with("application/merge-patch+json")
            || kind.starts_with("application/strategic-merge-patch+json"))
        {
            return status(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                &format!("the fake takes merge and strategic merge patches, not {kind:?}"),
            );
        }
    }
    let body = match parse_body(&body) {
        Ok(b) => b,
        Err(e) => return bad_request(&e),
    };
    let Some(replicas) = body.pointer("/spec/replicas").and_then(Value::as_i64) else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "spec.replicas: Required value",
        );
    };
    if replicas < 0 {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "spec.replicas: must be greater than or equal to 0",
        );
    }
    if conflicts(&mut s, precondition(&body), current) {
        return conflict("deployments.apps", &name);
    }
    s.revision += 1;
    let revision = s.revision;
    if let Some(d) = s.deployments.get_mut(&key) {
        d.replicas = replicas;
        d.resource_version = revision;
    }
    reconcile(&mut s);
    axum::Json(scale_json(&s.deployments[&key])).into_response()
}
