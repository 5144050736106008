//! What the daemon tells operators about itself: Prometheus metrics, the
//! kubelet's health and readiness probes, and the log format.
//!
//! Mirror the loop's totals into the metrics once a tick (see
//! [`metrics`] for counted versus mirrored counters).

pub mod metrics;

pub use metrics::{
    CauseLabel, KindLabel, Metrics, QueueLabel, cause, observe_family_total, observe_total, queue,
};
