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

use super::{Sink, SinkError};
use crate::records::Record;

pub(crate) struct BundleDir {
    dir: PathBuf,
    seq: AtomicU64,
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
        })
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

impl Sink for BundleDir {
    fn put(&self, name: &str, bytes: &[u8]) -> Result<String, SinkError> {
        self.write_atomic(name, bytes)
            .map(|p| p.display().to_string())
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
        // Only finished bundles: temporary files never match.
        .filter(|n| n.starts_with("roar-fragments-") && n.ends_with(".json"))
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
}
