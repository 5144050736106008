//! roar-node: eBPF provenance capture for ML jobs.
//!
//! The folders follow the data: `probes` (kernel programs) -> `events`
//! (decoding ring-buffer records) -> `attribution` (which task) -> `tasks`
//! (per-task state) -> `records` (hashes, roar's format) -> `sinks` (where
//! roar records go). `engine` is the event path and `capture` the start-up
//! both modes share; `local` is `roar-node run`, `daemon` the node daemon;
//! `observability` is what the daemon reports about itself; `proto` is the
//! spool's schema; `cli` parses arguments.
//!
//! Everything is private to the crate but [`cli::main`] (the binary) and
//! [`fuzzing`] (what the fuzz targets drive).

mod attribution;
mod capture;
pub mod cli;
mod collect;
mod daemon;
mod engine;
mod events;
mod local;
mod observability;
mod probes;
mod proto;
mod records;
mod sinks;
mod tasks;
#[cfg(test)]
mod test_support;

/// The surface the fuzz targets (`fuzz/`) drive: the parsers that take
/// input from outside (the kernel's ring buffer, cgroup paths, pod specs
/// and the policy ConfigMap) and the lossless path encoding.
pub mod fuzzing {
    /// Kubernetes cgroup paths.
    pub use crate::attribution::cgroup_path::{CgroupPath, parse as parse_cgroup_path};
    /// The opt-in policy and the pods it decides on.
    pub use crate::attribution::{
        Role, TraceReason,
        osmo::OSMO_EXEC,
        pods::{ContainerInfo, ContainerKind, PodInfo},
        policy::{
            ANNOTATION, Decision, OSMO_CTRL, OSMO_INIT, OSMO_TASK_LABEL, Policy, Selector,
            container_role,
        },
    };
    /// Ring-buffer bytes to a typed event, and a task that applies events.
    pub use crate::events::parse;
    /// Paths and argv as JSON strings, and back.
    pub use crate::records::encoding::{decode as decode_path, encode as encode_path};
    pub use crate::tasks::{Task, TaskLimits};
}
