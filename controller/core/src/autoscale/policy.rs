//! A pool's scaling policy: bounds, targets, windows, steps, headroom, drain rules, schedules.
//! [`PolicyPatch`] is the partial form read from `[pool_defaults]`, `[[pools]]` and the ops
//! API's `PATCH`: every field optional, applied over a base policy and validated as a whole.

use fleet_proto::NodeKind;
use serde::{Deserialize, Serialize};

use super::schedule::ScheduleRule;
use crate::ConfigIssue;

/// How one (region, kind) pool scales.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolPolicy {
    /// Fewest nodes (SERVING or STARTING) the pool keeps.
    pub min: u32,
    /// Most nodes the pool may have.
    pub max: u32,
    /// Capacity-unit utilization (used + reserved over total) the pool aims at, in (0, 1].
    pub target_utilization: f64,
    /// Mean CPU (fraction of the machine) the pool aims at, in (0, 1].
    pub cpu_target: f64,
    /// Mean memory (fraction of the machine) the pool aims at, in (0, 1].
    pub memory_target: f64,
    /// How long the signals must ask for more nodes before the pool grows. Media defaults to
    /// 30 s: a refused therapy call costs more than a spare node-minute.
    pub scale_up_window_secs: u64,
    /// How long the signals must ask for fewer nodes before the pool shrinks (the scaling
    /// guide's "sustained for 5+ minutes" is the lower bound; default 600 s).
    pub scale_down_window_secs: u64,
    /// Most nodes added or drained by one decision.
    pub max_step: u32,
    /// Sessions (of the default profile, two participants) of free capacity kept at all times.
    pub buffer_sessions: u32,
    /// How long a draining node may keep its calls before it is stopped anyway.
    pub drain_deadline_secs: u64,
    /// Nodes younger than this are never chosen to drain.
    pub min_node_age_secs: u64,
    /// How long a new node takes from launch to SERVING (bookings are served this early).
    pub boot_secs: u64,
    /// p95 session-setup time (offer to ICE connected) above which the pool grows, when
    /// sustained for the up window.
    pub setup_p95_limit_ms: u32,
    /// Relayed or forwarded bitrate (in + out, bits/s) one node is meant to carry at the
    /// target; when set, mean bitrate against it counts like CPU (TURN pools: bandwidth).
    #[serde(default)]
    pub bandwidth_target_bps: Option<u64>,
    /// Floors by weekday and local time in the region's time zone.
    #[schema(value_type = Vec<super::schedule::RawRule>)]
    pub schedule: Vec<ScheduleRule>,
}

impl PoolPolicy {
    /// The defaults for a pool of `kind` (the teletherapy row of the scaling guide for media:
    /// 2..12 nodes, CPU 70 %, memory 80 %).
    pub fn default_for(kind: NodeKind) -> PoolPolicy {
        let media = PoolPolicy {
            min: 2,
            max: 12,
            target_utilization: 0.7,
            cpu_target: 0.7,
            memory_target: 0.8,
            scale_up_window_secs: 30,
            scale_down_window_secs: 600,
            max_step: 4,
            buffer_sessions: 2,
            drain_deadline_secs: 7_200,
            min_node_age_secs: 300,
            boot_secs: 120,
            setup_p95_limit_ms: 200,
            bandwidth_target_bps: None,
            schedule: Vec::new(),
        };
        match kind {
            NodeKind::Media => media,
            NodeKind::Turn => PoolPolicy {
                min: 1,
                max: 6,
                scale_up_window_secs: 60,
                // 70 % of a 1 Gbit/s NIC.
                bandwidth_target_bps: Some(700_000_000),
                ..media
            },
        }
    }

    /// Checks what serde cannot: min ≤ max, targets in (0, 1], windows and steps positive,
    /// schedules well formed and not overlapping. The issue names the field.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        if self.max == 0 || self.max > 10_000 {
            return Err(ConfigIssue::new("max", "expected 1..=10000"));
        }
        if self.min > self.max {
            return Err(ConfigIssue::new(
                "min",
                format!("min ({}) is above max ({})", self.min, self.max),
            ));
        }
        for (field, v) in [
            ("target_utilization", self.target_utilization),
            ("cpu_target", self.cpu_target),
            ("memory_target", self.memory_target),
        ] {
            if !(v > 0.0 && v <= 1.0) {
                return Err(ConfigIssue::new(field, format!("{v} is not in (0, 1]")));
            }
        }
        for (field, v) in [
            ("scale_up_window_secs", self.scale_up_window_secs),
            ("scale_down_window_secs", self.scale_down_window_secs),
            ("drain_deadline_secs", self.drain_deadline_secs),
            ("boot_secs", self.boot_secs),
        ] {
            if v == 0 || v > 30 * 86_400 {
                return Err(ConfigIssue::new(field, "expected 1..=2592000 seconds"));
            }
        }
        if self.min_node_age_secs > 86_400 {
            return Err(ConfigIssue::new("min_node_age_secs", "expected 0..=86400"));
        }
        if self.max_step == 0 {
            return Err(ConfigIssue::new("max_step", "must be at least 1"));
        }
        if self.buffer_sessions > 100_000 {
            return Err(ConfigIssue::new("buffer_sessions", "expected 0..=100000"));
        }
        if self.bandwidth_target_bps == Some(0) {
            return Err(ConfigIssue::new(
                "bandwidth_target_bps",
                "must be at least 1",
            ));
        }
        if !(1..=60_000).contains(&self.setup_p95_limit_ms) {
            return Err(ConfigIssue::new("setup_p95_limit_ms", "expected 1..=60000"));
        }
        super::schedule::validate_rules(&self.schedule, self.max).map_err(|e| e.within("schedule"))
    }
}

/// Any subset of a policy's fields, applied over a base.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyPatch {
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub target_utilization: Option<f64>,
    pub cpu_target: Option<f64>,
    pub memory_target: Option<f64>,
    pub scale_up_window_secs: Option<u64>,
    pub scale_down_window_secs: Option<u64>,
    pub max_step: Option<u32>,
    pub buffer_sessions: Option<u32>,
    pub drain_deadline_secs: Option<u64>,
    pub min_node_age_secs: Option<u64>,
    pub boot_secs: Option<u64>,
    pub setup_p95_limit_ms: Option<u32>,
    pub bandwidth_target_bps: Option<u64>,
    #[schema(value_type = Option<Vec<super::schedule::RawRule>>)]
    pub schedule: Option<Vec<ScheduleRule>>,
}

impl PolicyPatch {
    /// `base` with this patch's fields replacing its own, validated.
    pub fn apply(&self, base: &PoolPolicy) -> Result<PoolPolicy, ConfigIssue> {
        let p = PoolPolicy {
            min: self.min.unwrap_or(base.min),
            max: self.max.unwrap_or(base.max),
            target_utilization: self.target_utilization.unwrap_or(base.target_utilization),
            cpu_target: self.cpu_target.unwrap_or(base.cpu_target),
            memory_target: self.memory_target.unwrap_or(base.memory_target),
            scale_up_window_secs: self
                .scale_up_window_secs
                .unwrap_or(base.scale_up_window_secs),
            scale_down_window_secs: self
                .scale_down_window_secs
                .unwrap_or(base.scale_down_window_secs),
            max_step: self.max_step.unwrap_or(base.max_step),
            buffer_sessions: self.buffer_sessions.unwrap_or(base.buffer_sessions),
            drain_deadline_secs: self.drain_deadline_secs.unwrap_or(base.drain_deadline_secs),
            min_node_age_secs: self.min_node_age_secs.unwrap_or(base.min_node_age_secs),
            boot_secs: self.boot_secs.unwrap_or(base.boot_secs),
            setup_p95_limit_ms: self.setup_p95_limit_ms.unwrap_or(base.setup_p95_limit_ms),
            bandwidth_target_bps: self.bandwidth_target_bps.or(base.bandwidth_target_bps),
            schedule: self
                .schedule
                .clone()
                .unwrap_or_else(|| base.schedule.clone()),
        };
        p.validate()?;
        Ok(p)
    }

    /// This patch over another one: fields set here win.
    pub fn over(&self, base: &PolicyPatch) -> PolicyPatch {
        PolicyPatch {
            min: self.min.or(base.min),
            max: self.max.or(base.max),
            target_utilization: self.target_utilization.or(base.target_utilization),
            cpu_target: self.cpu_target.or(base.cpu_target),
            memory_target: self.memory_target.or(base.memory_target),
            scale_up_window_secs: self.scale_up_window_secs.or(base.scale_up_window_secs),
            scale_down_window_secs: self.scale_down_window_secs.or(base.scale_down_window_secs),
            max_step: self.max_step.or(base.max_step),
            buffer_sessions: self.buffer_sessions.or(base.buffer_sessions),
            drain_deadline_secs: self.drain_deadline_secs.or(base.drain_deadline_secs),
            min_node_age_secs: self.min_node_age_secs.or(base.min_node_age_secs),
            boot_secs: self.boot_secs.or(base.boot_secs),
            setup_p95_limit_ms: self.setup_p95_limit_ms.or(base.setup_p95_limit_ms),
            bandwidth_target_bps: self.bandwidth_target_bps.or(base.bandwidth_target_bps),
            schedule: self.schedule.clone().or_else(|| base.schedule.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_follow_the_guide() {
        let media = PoolPolicy::default_for(NodeKind::Media);
        assert_eq!(media.validate(), Ok(()));
        assert_eq!((media.min, media.max), (2, 12));
        assert_eq!((media.cpu_target, media.memory_target), (0.7, 0.8));
        assert_eq!(media.scale_up_window_secs, 30);
        assert!(media.scale_down_window_secs >= 300);
        assert_eq!(PoolPolicy::default_for(NodeKind::Turn).validate(), Ok(()));
    }

    #[test]
    fn bad_values_name_their_field() {
        let base = PoolPolicy::default_for(NodeKind::Media);
        for (json, field) in [
            (r#"{"min": 5, "max": 3}"#, "min"),
            (r#"{"max": 0}"#, "max"),
            (r#"{"cpu_target": 0.0}"#, "cpu_target"),
            (r#"{"target_utilization": 1.5}"#, "target_utilization"),
            (r#"{"memory_target": -0.1}"#, "memory_target"),
            (r#"{"scale_down_window_secs": 0}"#, "scale_down_window_secs"),
            (r#"{"max_step": 0}"#, "max_step"),
            (
                r#"{"schedule": [{"days": "mon", "from": "08:00", "to": "20:00", "min": 13}]}"#,
                "schedule[0].min",
            ),
        ] {
            let patch: PolicyPatch = serde_json::from_str(json).expect(json);
            let err = patch.apply(&base).expect_err(json);
            assert_eq!(err.field, field, "{json}: {err:?}");
        }
        let nan = PolicyPatch {
            memory_target: Some(f64::NAN),
            ..Default::default()
        };
        assert_eq!(nan.apply(&base).expect_err("NaN").field, "memory_target");
        // Unknown fields and negative numbers are refused when read.
        assert!(serde_json::from_str::<PolicyPatch>(r#"{"minimum": 1}"#).is_err());
        assert!(serde_json::from_str::<PolicyPatch>(r#"{"min": -1}"#).is_err());
    }

    #[test]
    fn a_patch_changes_only_its_fields() {
        let base = PoolPolicy::default_for(NodeKind::Media);
        let patched = PolicyPatch {
            max: Some(20),
            ..Default::default()
        }
        .apply(&base)
        .expect("valid");
        assert_eq!(patched.max, 20);
        assert_eq!(PoolPolicy { max: 12, ..patched }, base);
        let layered = PolicyPatch {
            min: Some(3),
            ..Default::default()
        }
        .over(&PolicyPatch {
            min: Some(1),
            max: Some(4),
            ..Default::default()
        });
        assert_eq!((layered.min, layered.max), (Some(3), Some(4)));
    }
}
