//! Keeps the pool going when a file system hangs. A worker whose call has
//! not returned within the stall budget is abandoned: its job is answered
//! (unhashed, with the reason), its device is marked hung so no other
//! worker walks into it, and a new worker takes its place. The abandoned
//! thread leaves when (if) its call returns; until then it is counted as
//! stuck.

use std::{
    sync::{
        Arc, Mutex,
        atomic::Ordering,
        mpsc::{self, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::{
    HashOutcome, Shared,
    worker::{self, WorkerState, secs},
};

/// A live worker.
struct Live {
    state: Arc<WorkerState>,
    thread: JoinHandle<()>,
}

pub(super) struct Watchdog {
    workers: Arc<Mutex<Vec<Live>>>,
    /// Dropped to stop the watchdog: it wakes at once instead of at the
    /// end of its tick (a sleep here made every `run` wait up to 250 ms
    /// before its record).
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts `workers` hashing threads and the watchdog over them.
    pub(super) fn start(shared: Arc<Shared>, workers: usize) -> std::io::Result<Self> {
        let live = (0..workers)
            .map(|_| spawn_worker(&shared))
            .collect::<std::io::Result<Vec<_>>>()?;
        let workers = Arc::new(Mutex::new(live));
        let (stop, stopped) = mpsc::channel();
        let w = workers.clone();
        let thread = std::thread::Builder::new()
            .name("hash-watchdog".into())
            .spawn(move || watch(shared, w, stopped))?;
        Ok(Self {
            workers,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Waits for the live workers to leave (the queue is closed), while
    /// stalled ones are still abandoned, then stops the watchdog.
    pub(super) fn stop(mut self) {
        loop {
            let done = lock(&self.workers).iter().all(|l| l.thread.is_finished());
            if done {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for l in lock(&self.workers).drain(..) {
            let _ = l.thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawn_worker(shared: &Arc<Shared>) -> std::io::Result<Live> {
    let state = Arc::new(WorkerState::default());
    let (sh, st) = (shared.clone(), state.clone());
    let thread = std::thread::Builder::new()
        .name("hash".into())
        .spawn(move || worker::run(sh, st))?;
    Ok(Live { state, thread })
}

fn watch(shared: Arc<Shared>, workers: Arc<Mutex<Vec<Live>>>, stopped: mpsc::Receiver<()>) {
    let tick =
        (shared.budget.stall / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
        let now = Instant::now();
        let mut live = lock(&workers);
        let mut i = 0;
        while i < live.len() {
            let Some(stalled) = live[i].state.give_up_if_stalled(&shared, now) else {
                i += 1;
                continue;
            };
            // Its thread is left to its call (dropping the handle detaches it).
            drop(live.swap_remove(i));
            abandon(&shared, stalled);
            match spawn_worker(&shared) {
                Ok(l) => live.push(l),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a hashing thread to replace a stuck one")
                }
            }
        }
    }
}

/// Answers for an abandoned worker's job.
fn abandon(shared: &Shared, stalled: worker::Stalled) {
    let stats = &shared.stats;
    stats.over_budget.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(
        stuck = stats.workers_stuck.load(Ordering::Relaxed),
        "a file read did not return within {}: hashing thread abandoned and replaced",
        secs(shared.budget.stall)
    );
    shared.finish(
        &stalled.slot,
        HashOutcome::OverBudget(format!(
            "its file system did not answer for {} (a hung network or FUSE mount?); the hashing thread was abandoned",
            secs(shared.budget.stall)
        )),
    );
}
