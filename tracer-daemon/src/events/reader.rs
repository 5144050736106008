//! The one consumer of the ring buffer.
//!
//! The programs send records without waking anyone (one wakeup per event
//! is the largest traced cost) unless the buffer fills past a threshold,
//! so the reader drains on a short timer as well as on wakeups.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use tokio::io::unix::AsyncFd;

/// How often the buffer is drained when nothing wakes the reader.
pub(crate) const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

pub(crate) struct EventReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl EventReader {
    pub(crate) fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd for as long as the AsyncFd
        // owns the RingBuf, and always reports the same fd.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(Self { ring })
    }

    /// Hands every waiting record to `f`; returns how many.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(&[u8])) -> usize {
        let ring = self.ring.get_mut();
        let mut n = 0;
        while let Some(item) = ring.next() {
            f(&item);
            n += 1;
        }
        n
    }

    /// Waits for a wakeup or the drain interval, whichever comes first.
    pub(crate) async fn wait(&mut self) {
        tokio::select! {
            guard = self.ring.readable_mut() => {
                if let Ok(mut g) = guard {
                    g.clear_ready();
                }
            }
            _ = tokio::time::sleep(DRAIN_INTERVAL) => {}
        }
    }
}
