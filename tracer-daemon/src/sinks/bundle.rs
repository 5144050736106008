//! roar fragment bundles in a directory, written the way roar writes them:
//! a temporary file (whose name does not match `roar-fragments-*.json`, so
//! a concurrent `roar k8s ingest-bundles` never sees it half written),
//! flushed to disk, then renamed into place. Files are 0600 in a 0700
//! directory: records reveal what a job read and ran.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context;
use serde_json::{Map, Value};

use super::{Item, Sink, SinkError};
use crate::records::Record;

pub(crate) struct BundleDir {
    dir: PathBuf,
    seq: AtomicU64,
    /// Bytes of finished bundles the directory may hold (`None`: no
    /// limit). A record that would pass it is refused, not written: the
    /// daemon keeps it in the spool until the directory is collected.
    budget: Option<u64>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SinkError + '_ {
    move |source| SinkError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl BundleDir {
    /// Uses `dir`, creating it (mode 0700) if needed.
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Result<Self, SinkError> {
        let dir = dir.into();
        if !dir.is_dir() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(io(&dir))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(io(&dir))?;
        }
        Ok(Self {
            dir,
            seq: AtomicU64::new(0),
            budget: None,
        })
    }

    /// Refuses records past `budget` bytes of bundles.
    pub(crate) fn with_budget(mut self, budget: Option<u64>) -> Self {
        self.budget = budget;
        self
    }

    /// Finished bundles (name, size, modification time), oldest first.
    fn bundles(&self) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
        let mut v: Vec<_> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| is_bundle_name(&e.file_name().to_string_lossy()))
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                Some((e.path(), m.len(), m.modified().ok()?))
            })
            .collect();
        v.sort_by_key(|(p, _, t)| (*t, p.clone()));
        v
    }

    /// Bytes of finished bundles in the directory now.
    pub(crate) fn used_bytes(&self) -> u64 {
        self.bundles().iter().map(|(_, n, _)| n).sum()
    }

    /// Fails now, not after the task ran, if records cannot be created
    /// here (read-only file system, wrong owner, not a directory).
    pub(crate) fn check_writable(&self) -> Result<(), SinkError> {
        let probe = self
            .dir
            .join(format!(".tmp-writable-{}", std::process::id()));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&probe)
            .map_err(io(&self.dir))?;
        fs::remove_file(&probe).map_err(io(&probe))
    }

    /// Writes `bytes` as `name`, atomically.
    pub(crate) fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, SinkError> {
        let target = self.dir.join(name);
        let tmp = self.dir.join(format!(
            ".tmp-{}-{}-{}",
            std::process::id(),
            self.seq.fetch_add(1, Ordering::Relaxed),
            name.trim_end_matches(".json")
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(bytes).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
            fs::rename(&tmp, &target).map_err(io(&target))?;
            // Make the rename itself durable.
            File::open(&self.dir)
                .and_then(|d| d.sync_all())
                .map_err(io(&self.dir))?;
            Ok(target.clone())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}

/// Records with more files than this are written without indentation
/// (a third smaller, and one less copy of a big record in memory).
const PRETTY_MAX_FILES: usize = 10_000;

/// A record as the bytes of its bundle file (one fragment).
pub(crate) fn bundle_bytes(record: &Record) -> Result<Vec<u8>, serde_json::Error> {
    // Borrowed: serialized as a `Bundle` of one fragment, without a copy.
    #[derive(serde::Serialize)]
    struct OneFragment<'a> {
        fragments: &'a [crate::records::fragment::Fragment],
    }
    let bundle = OneFragment {
        fragments: std::slice::from_ref(&record.fragment),
    };
    let files = record.fragment.reads.len() + record.fragment.writes.len();
    let mut bytes = if files > PRETTY_MAX_FILES {
        serde_json::to_vec(&bundle)?
    } else {
        serde_json::to_vec_pretty(&bundle)?
    };
    bytes.push(b'\n');
    Ok(bytes)
}

fn is_bundle_name(n: &str) -> bool {
    // Temporary files never match.
    n.starts_with("roar-fragments-") && n.ends_with(".json")
}

impl Sink for BundleDir {
    fn put(&self, item: &Item<'_>) -> Result<String, SinkError> {
        if let Some(budget) = self.budget {
            let used = self.used_bytes();
            // Rewriting a bundle that is there already takes no more room.
            let again = fs::metadata(self.dir.join(item.bundle_file)).map_or(0, |m| m.len());
            if used - again.min(used) + item.bytes.len() as u64 > budget {
                return Err(SinkError::Full {
                    dir: self.dir.clone(),
                    used,
                    budget,
                });
            }
        }
        self.write_atomic(item.bundle_file, item.bytes)
            .map(|p| p.display().to_string())
    }

    fn check(&self) -> Result<(), SinkError> {
        self.check_writable()
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn off_node(&self) -> bool {
        false
    }

    fn local_bytes(&self) -> u64 {
        self.used_bytes()
    }
}

/// Copies of records already in an off-node store, kept on the node up to
/// a size and an age: the oldest go first. Only copies are ever removed
/// here (each was confirmed by the store before it was written).
pub(crate) struct LocalCopies {
    dir: BundleDir,
    max_bytes: u64,
    max_age: Option<std::time::Duration>,
}

impl LocalCopies {
    /// `None` when nothing is to be kept.
    pub(crate) fn new(
        dir: &Path,
        max_bytes: u64,
        max_age: Option<std::time::Duration>,
    ) -> Result<Option<Self>, SinkError> {
        if max_bytes == 0 || max_age.is_some_and(|a| a.is_zero()) {
            return Ok(None);
        }
        Ok(Some(Self {
            dir: BundleDir::new(dir)?,
            max_bytes,
            max_age,
        }))
    }

    /// Keeps a copy of a delivered record, then trims the oldest copies.
    pub(crate) fn keep(&self, name: &str, bytes: &[u8]) {
        if let Err(e) = self.dir.write_atomic(name, bytes) {
            tracing::warn!(error = %e, "cannot keep a local copy of a delivered record (it is in the store)");
        }
        self.trim();
    }

    /// Removes copies past the age, then the oldest past the size.
    pub(crate) fn trim(&self) {
        let now = std::time::SystemTime::now();
        let mut copies = self.dir.bundles();
        let mut total: u64 = copies.iter().map(|(_, n, _)| n).sum();
        copies.retain(|(p, n, t)| {
            let old = self
                .max_age
                .is_some_and(|a| now.duration_since(*t).is_ok_and(|age| age > a));
            if old || total > self.max_bytes {
                if fs::remove_file(p).is_ok() {
                    total -= n;
                }
                return false;
            }
            true
        });
    }

    pub(crate) fn used_bytes(&self) -> u64 {
        self.dir.used_bytes()
    }
}

/// Every finished bundle of `dir` as one JSON object,
/// `{"bundles": {name: bundle}}`, so a collector can fetch them with
/// `kubectl exec` from a DaemonSet pod whose image has no shell or tar.
pub(crate) fn export(dir: &Path) -> anyhow::Result<Value> {
    let mut out = Map::new();
    let mut names: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("{}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_bundle_name(n))
        .collect();
    names.sort();
    for name in names {
        let text = fs::read_to_string(dir.join(&name)).with_context(|| name.clone())?;
        let v: Value = serde_json::from_str(&text).with_context(|| name.clone())?;
        out.insert(name, v);
    }
    let mut doc = Map::new();
    doc.insert("bundles".into(), Value::Object(out));
    Ok(Value::Object(doc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_modes_and_no_leftovers() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("b");
        let sink = BundleDir::new(&dir).unwrap();
        let p = sink
            .write_atomic("roar-fragments-x-main-0.json", b"{}")
            .unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"{}");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }

    /// With a budget, a record that would pass it is refused (nothing
    /// written, nothing removed); rewriting one already there fits.
    #[test]
    fn budget_refuses_what_would_pass_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = BundleDir::new(root.path().join("b"))
            .unwrap()
            .with_budget(Some(25));
        let owner = crate::records::Owner::default();
        let put = |name: &str, len: usize| {
            let bytes = bytes::Bytes::from(vec![b'x'; len]);
            dir.put(&Item {
                task_id: "t",
                bundle_file: name,
                owner: &owner,
                bytes: &bytes,
            })
        };
        put("roar-fragments-a.json", 10).unwrap();
        put("roar-fragments-b.json", 10).unwrap();
        let e = put("roar-fragments-c.json", 10).unwrap_err();
        assert!(
            matches!(
                e,
                SinkError::Full {
                    used: 20,
                    budget: 25,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("--bundle-dir-max-bytes"), "{e}");
        put("roar-fragments-b.json", 15).unwrap();
        assert_eq!(dir.used_bytes(), 25);
        assert_eq!(dir.bundles().len(), 2, "nothing removed");
    }
}
