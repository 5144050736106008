//! What the kubelet's probes ask: is the daemon alive (its loop turning),
//! and is it ready (tracing, and knowing which pod a cgroup belongs to).
//!
//! Atomics only, so the loop's `beat()` costs one store and the HTTP server
//! reads without taking anything from the loop.

use std::{
    fmt,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

/// How long the loop may go without a beat before /healthz fails. The loop
/// ticks every 200 ms; 30 s is far beyond any honest pause (a long drain,
/// a slow API server) and still restarts a wedged daemon within a minute or
/// two with the DaemonSet's liveness probe.
pub(crate) const DEFAULT_STALENESS: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct Health {
    /// Why this node cannot be traced at all (no cgroup v2, no BTF, the
    /// kernel refused the programs), once known: never ready then.
    unsupported: std::sync::OnceLock<String>,
    /// Why the sink refuses records (bad URL, no bucket, no credentials,
    /// unreachable), while it does: records wait in the spool meanwhile.
    sink_problem: std::sync::Mutex<Option<String>>,
    programs_attached: AtomicBool,
    pod_cache_synced: AtomicBool,
    /// Milliseconds from `origin` to the last beat.
    last_beat_ms: AtomicU64,
    origin: Instant,
    staleness: Duration,
}

/// Why a probe fails; its `Display` is the probe's response body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotOk {
    /// The loop has not beaten for `since` (more than `limit`).
    Stale { since: Duration, limit: Duration },
    /// Not ready: what is missing, in words.
    Missing(Vec<String>),
}

impl fmt::Display for NotOk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotOk::Stale { since, limit } => write!(
                f,
                "unhealthy: daemon loop last beat {:.1}s ago (limit {}s)",
                since.as_secs_f64(),
                limit.as_secs_f64()
            ),
            NotOk::Missing(what) => write!(f, "not ready: {}", what.join(", ")),
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self::new(DEFAULT_STALENESS)
    }
}

impl Health {
    /// Creation counts as a beat: start-up (loading programs, the first pod
    /// list) has `staleness` to reach the loop before /healthz fails.
    pub(crate) fn new(staleness: Duration) -> Self {
        Self {
            unsupported: std::sync::OnceLock::new(),
            sink_problem: std::sync::Mutex::new(None),
            programs_attached: AtomicBool::new(false),
            pod_cache_synced: AtomicBool::new(false),
            last_beat_ms: AtomicU64::new(0),
            origin: Instant::now(),
            staleness,
        }
    }

    /// The daemon loop calls this every tick.
    pub(crate) fn beat(&self) {
        self.last_beat_ms
            .store(self.elapsed_ms(), Ordering::Relaxed);
    }

    /// This node cannot be traced, and why: /readyz says so from now on.
    pub(crate) fn set_unsupported(&self, why: String) {
        let _ = self.unsupported.set(why);
    }

    /// The sink refuses records, and why (`None`: it takes them).
    pub(crate) fn set_sink_problem(&self, why: Option<String>) {
        *self.sink_problem.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    pub(crate) fn set_programs_attached(&self, attached: bool) {
        self.programs_attached.store(attached, Ordering::Relaxed);
    }

    /// True once the pod watch's first list is in: before it, a cgroup of
    /// an opted-in pod cannot be told from any other.
    pub(crate) fn set_pod_cache_synced(&self, synced: bool) {
        self.pod_cache_synced.store(synced, Ordering::Relaxed);
    }

    pub(crate) fn programs_attached(&self) -> bool {
        self.programs_attached.load(Ordering::Relaxed)
    }

    pub(crate) fn pod_cache_synced(&self) -> bool {
        self.pod_cache_synced.load(Ordering::Relaxed)
    }

    /// Time since the last beat.
    pub(crate) fn since_beat(&self) -> Duration {
        let last = self.last_beat_ms.load(Ordering::Relaxed);
        Duration::from_millis(self.elapsed_ms().saturating_sub(last))
    }

    /// /healthz: the loop beat within `staleness`.
    pub(crate) fn liveness(&self) -> Result<(), NotOk> {
        let since = self.since_beat();
        if since > self.staleness {
            return Err(NotOk::Stale {
                since,
                limit: self.staleness,
            });
        }
        Ok(())
    }

    /// /readyz: programs attached, pod cache synced, and alive. Names every
    /// missing part, so one probe failure says all that is wrong.
    pub(crate) fn readiness(&self) -> Result<(), NotOk> {
        let mut missing = Vec::new();
        if let Some(why) = self.unsupported.get() {
            missing.push(format!("cannot trace on this node: {why}"));
        }
        if !self.programs_attached() {
            missing.push("programs not attached".into());
        }
        if !self.pod_cache_synced() {
            missing.push("pod cache not synced".into());
        }
        if self.liveness().is_err() {
            missing.push("daemon loop stalled".into());
        }
        if let Some(why) = &*self.sink_problem.lock().unwrap_or_else(|e| e.into_inner()) {
            missing.push(format!(
                "sink refuses records ({why}); they wait in the spool"
            ));
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(NotOk::Missing(missing))
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_both_parts_and_names_what_is_missing() {
        let h = Health::default();
        assert_eq!(h.liveness(), Ok(()), "creation counts as a beat");
        assert_eq!(
            h.readiness().unwrap_err().to_string(),
            "not ready: programs not attached, pod cache not synced"
        );
        h.set_programs_attached(true);
        assert_eq!(
            h.readiness().unwrap_err().to_string(),
            "not ready: pod cache not synced"
        );
        h.set_pod_cache_synced(true);
        assert_eq!(h.readiness(), Ok(()));
        h.set_programs_attached(false);
        assert_eq!(
            h.readiness().unwrap_err().to_string(),
            "not ready: programs not attached"
        );
    }

    /// A node that cannot be traced is never ready, and says why first.
    #[test]
    fn unsupported_node_says_why() {
        let h = Health::default();
        h.set_pod_cache_synced(true);
        h.set_unsupported("no cgroup v2 mount".into());
        assert_eq!(
            h.readiness().unwrap_err().to_string(),
            "not ready: cannot trace on this node: no cgroup v2 mount, programs not attached"
        );
        assert_eq!(h.liveness(), Ok(()), "alive: not restarted hot");
    }

    /// A sink that refuses records makes the daemon not ready, saying why,
    /// until it takes them again.
    #[test]
    fn sink_problem_is_reported_until_it_clears() {
        let h = Health::default();
        h.set_programs_attached(true);
        h.set_pod_cache_synced(true);
        h.set_sink_problem(Some("s3://b/p: no such bucket: NoSuchBucket".into()));
        assert_eq!(
            h.readiness().unwrap_err().to_string(),
            "not ready: sink refuses records (s3://b/p: no such bucket: NoSuchBucket); they wait in the spool"
        );
        h.set_sink_problem(None);
        assert_eq!(h.readiness(), Ok(()));
    }

    #[test]
    fn stale_beat_fails_liveness_and_readiness() {
        let h = Health::new(Duration::from_millis(50));
        h.set_programs_attached(true);
        h.set_pod_cache_synced(true);
        std::thread::sleep(Duration::from_millis(120));
        let err = h.liveness().unwrap_err();
        assert!(
            matches!(err, NotOk::Stale { since, .. } if since >= Duration::from_millis(100)),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("unhealthy: daemon loop last beat ")
                && text.ends_with("s ago (limit 0.05s)"),
            "{text}"
        );
        assert_eq!(
            h.readiness().unwrap_err().to_string(),
            "not ready: daemon loop stalled"
        );
        h.beat();
        assert_eq!(h.liveness(), Ok(()));
        assert_eq!(h.readiness(), Ok(()));
    }
}
