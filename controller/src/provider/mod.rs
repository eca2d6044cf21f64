//! Pool providers: what turns "this region needs a node" into a running machine. Only the local
//! process provider exists so far (`fleet up`); EC2 and Kubernetes come with autoscaling.

pub mod local;
