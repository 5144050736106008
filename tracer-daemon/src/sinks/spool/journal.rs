//! The journal's bytes: entries framed with a checksum and a length, and
//! what a sequence of entries says is still live.

use std::{
    collections::BTreeMap,
    fs,
    time::{SystemTime, UNIX_EPOCH},
};

use prost::Message;

use super::pb::{self, entry::Kind};

/// Larger frames are not ours: a corrupt length.
const MAX_FRAME: u64 = 256 << 20;

pub(crate) fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub(super) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn checksum(bytes: &[u8]) -> u64 {
    let h = blake3::hash(bytes);
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// One entry, framed and length-delimited, ready to append.
pub(super) fn frame(kind: Kind) -> Vec<u8> {
    let entry = pb::Entry {
        wall_ns: now_ns(),
        kind: Some(kind),
    }
    .encode_to_vec();
    pb::Frame {
        checksum: checksum(&entry),
        entry,
    }
    .encode_length_delimited_to_vec()
}

/// Decodes a journal. Returns the entries, the corrupt count and the
/// length of the valid prefix (what follows is a torn entry).
pub(super) fn decode_journal(mut buf: &[u8]) -> (Vec<pb::Entry>, u64, usize) {
    let total = buf.len();
    let mut entries = Vec::new();
    let mut corrupt = 0;
    loop {
        let before = buf.len();
        if before == 0 {
            return (entries, corrupt, total);
        }
        let mut peek = buf;
        let len = match prost::encoding::decode_varint(&mut peek) {
            Ok(n) if n <= MAX_FRAME && (n as usize) <= peek.len() => n as usize,
            // A length that cannot be (torn, or garbage): the valid prefix
            // ends here.
            _ => return (entries, corrupt, total - before),
        };
        let body = &peek[..len];
        buf = &peek[len..];
        match pb::Frame::decode(body) {
            Ok(f) if checksum(&f.entry) == f.checksum => match pb::Entry::decode(&*f.entry) {
                Ok(e) => entries.push(e),
                Err(_) => corrupt += 1,
            },
            _ => corrupt += 1,
        }
    }
}

/// What a journal says is still live, entry by entry.
#[derive(Default)]
pub(super) struct Live {
    pub(super) open: BTreeMap<String, pb::TaskOpened>,
    pub(super) undelivered: BTreeMap<String, pb::RecordReady>,
    pub(super) checkpoints: BTreeMap<String, pb::TaskCheckpoint>,
    pub(super) last_alive: Option<u64>,
    pub(super) rebooted: bool,
}

impl Live {
    /// Replays the entries in order. `Err(node)`: the journal is another
    /// node's.
    pub(super) fn replay(entries: Vec<pb::Entry>, node: &str, boot: &str) -> Result<Self, String> {
        let mut l = Live::default();
        for e in entries {
            l.last_alive = Some(e.wall_ns);
            match e.kind {
                Some(Kind::Header(h)) => {
                    if !h.node.is_empty() && h.node != node {
                        return Err(h.node);
                    }
                    l.rebooted |= !h.boot_id.is_empty() && h.boot_id != boot;
                }
                Some(Kind::TaskOpened(t)) => {
                    l.open.insert(t.task_id.clone(), t);
                }
                Some(Kind::TaskCheckpoint(c)) => {
                    l.checkpoints.insert(c.task_id.clone(), c);
                }
                Some(Kind::RecordReady(r)) => {
                    l.open.remove(&r.task_id);
                    l.checkpoints.remove(&r.task_id);
                    l.undelivered.insert(r.bundle_file.clone(), r);
                }
                Some(Kind::RecordDelivered(d)) => {
                    l.undelivered.remove(&d.bundle_file);
                }
                Some(Kind::TaskClosed(c)) => {
                    l.open.remove(&c.task_id);
                    l.checkpoints.remove(&c.task_id);
                }
                Some(Kind::Heartbeat(_)) | None => {}
            }
        }
        l.checkpoints.retain(|id, _| l.open.contains_key(id));
        Ok(l)
    }

    /// Every task still open had a gap: what the previous daemon captured
    /// of it since its last checkpoint (or since it began, without one)
    /// died with it, up to `now`.
    pub(super) fn add_restart_gaps(&mut self, now: u64) {
        let down = self.last_alive.map_or_else(String::new, |ns| {
            format!(
                " (its last sign of life: {} s before the restart)",
                now.saturating_sub(ns) / 1_000_000_000
            )
        });
        for t in self.open.values_mut() {
            let captured_until = t.gaps.last().map_or(t.traced_since_ns, |g| g.to_ns);
            let from_ns = self
                .checkpoints
                .get(&t.task_id)
                .map_or(captured_until, |c| c.at_ns.max(captured_until));
            t.gaps.push(pb::Gap {
                from_ns,
                to_ns: now,
                why: format!(
                    "roar-node restarted{down}: events after its last checkpoint of this task were lost with it"
                ),
            });
        }
    }
}
