//! What the daemon tells operators about itself: Prometheus metrics, the
//! kubelet's health and readiness probes, and the log format.
//!
//! Wiring, for the daemon: make one [`Metrics`] and one [`Health`] (each in
//! an `Arc`), start [`serve`] before the slow start-up steps so the probes
//! answer from the start, call [`Health::beat`] on every loop tick, set
//! [`Health::set_programs_attached`] and [`Health::set_pod_cache_synced`]
//! when those happen, and mirror the loop's totals into the metrics once a
//! tick (see [`metrics`] for counted versus mirrored counters).

pub(crate) mod health;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod server;

pub(crate) use health::{DEFAULT_STALENESS, Health};
pub(crate) use metrics::{Metrics, queue};
pub(crate) use server::serve;

/// Where the DaemonSet serves /metrics, /healthz and /readyz (its
/// `metrics` containerPort and probes use this port).
pub(crate) const DEFAULT_METRICS_ADDR: &str = "0.0.0.0:9477";

/// Environment variable of the daemon's `--metrics-addr`.
pub(crate) const METRICS_ADDR_ENV: &str = "ROAR_NODE_METRICS_ADDR";
