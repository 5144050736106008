//! roar-node: eBPF provenance capture for ML jobs.
//!
//! The folders follow the data: `probes` (kernel programs) -> `events`
//! (decoding) -> `attribution` (which task) -> `tasks` (per-task state) ->
//! `records` (hashes, roar's format) -> `sinks` (where records go).
//! `engine` is the event path shared by the modes; `observability` is what
//! the daemon reports about itself (metrics, probes, logs); `proto` is the
//! spool's schema (task state and records that survive a crash); `cli`
//! wires them.

pub mod attribution;
pub mod cli;
pub mod engine;
pub mod events;
pub mod observability;
pub mod probes;
pub mod proto;
pub mod records;
pub mod sinks;
pub mod tasks;
