//! Wiring shared by `run` and `daemon`: checks, programs, the ring-buffer
//! reader, the hash workers and the engine, and small helpers for records.

use std::{collections::BTreeMap, path::PathBuf, sync::Arc};

use anyhow::Context;
use serde_json::{Value, json};

use crate::{
    engine::Engine,
    events::reader::EventReader,
    probes::{KernelStats, ProbeOptions, Probes, preflight},
    records::hashing::HashPool,
    tasks::TaskLimits,
};

/// Everything the event path needs, loaded and attached.
pub struct Capture {
    pub probes: Probes,
    pub reader: EventReader,
    pub pool: Arc<HashPool>,
    pub engine: Engine,
}

impl Capture {
    /// Checks capabilities and BTF, loads and attaches the programs, and
    /// starts `hash_workers` hashing threads. `proc_root`: where processes'
    /// namespaces are opened (`/proc`, or the host's in a pod).
    pub fn start(
        opts: ProbeOptions,
        proc_root: PathBuf,
        hash_workers: usize,
        limits: TaskLimits,
    ) -> anyhow::Result<Self> {
        preflight::check_capabilities()?;
        preflight::check_btf(&opts.btf_path)?;
        let mut probes = Probes::load(opts)?;
        let reader = EventReader::new(probes.take_events()?).context("ring buffer")?;
        let pool = Arc::new(HashPool::new(hash_workers, 8192, 200_000).context("hash workers")?);
        let engine = Engine::new(pool.clone(), proc_root, limits)?;
        Ok(Self {
            probes,
            reader,
            pool,
            engine,
        })
    }
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The kernel's counters that are not zero, by name.
pub fn kernel_counters(stats: &KernelStats) -> Value {
    json!(
        stats
            .named()
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .collect::<BTreeMap<_, _>>()
    )
}

#[cfg(test)]
mod tests {
    use roar_node_common::loss;

    use super::*;

    #[test]
    fn kernel_counters_name_kernel_read_failures() {
        let mut counters = vec![0; loss::STATS_LEN as usize];
        counters[loss::KERNEL_READ_FAILED as usize] = 2;
        let v = kernel_counters(&KernelStats { counters });
        assert_eq!(v, json!({"lost_kernel_read_failed": 2}));
    }
}
