//! What both modes start the same way: the capability and BTF checks, the
//! programs, the ring-buffer reader, the hash workers and the engine.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;

use crate::{
    engine::{Engine, TaskHome},
    events::reader::EventReader,
    probes::{ProbeOptions, Probes, preflight},
    records::hashing::{HashBudget, HashPool},
    tasks::TaskLimits,
};

/// Everything the event path needs, loaded and attached.
pub(crate) struct Capture<L> {
    pub(crate) probes: Probes,
    pub(crate) reader: EventReader,
    pub(crate) pool: Arc<HashPool>,
    pub(crate) engine: Engine<L>,
}

/// Jobs the hash queue holds before a first read's hash is deferred to
/// the task's end (and counted).
const HASH_QUEUE: usize = 8192;
/// Files whose digests the hash pool remembers.
const HASH_CACHE: usize = 200_000;

impl<L> Capture<L> {
    /// Checks capabilities and BTF, loads and attaches the programs, and
    /// starts `hash_workers` hashing threads, each file within
    /// `hash_budget`. `proc_root`: where processes'
    /// namespaces are opened (`/proc`, or the host's in a pod).
    pub(crate) fn start(
        opts: ProbeOptions,
        proc_root: PathBuf,
        hash_workers: usize,
        hash_budget: HashBudget,
        limits: TaskLimits,
        home: TaskHome,
    ) -> anyhow::Result<Self> {
        preflight::check_capabilities()?;
        preflight::check_btf(&opts.btf_path)?;
        let mut probes = Probes::load(opts)?;
        let reader = EventReader::new(probes.take_events()?).context("ring buffer")?;
        let pool = HashPool::new(hash_workers, HASH_QUEUE, HASH_CACHE, hash_budget);
        let pool = Arc::new(pool.context("hash workers")?);
        let engine = Engine::new(pool.clone(), proc_root, limits, home)?;
        Ok(Self {
            probes,
            reader,
            pool,
            engine,
        })
    }
}
