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

use super::{Sink, SinkError};
use crate::records::Record;

pub struct BundleDir {
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
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, SinkError> {
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
    pub fn check_writable(&self) -> Result<(), SinkError> {
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

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Writes `bytes` as `name`, atomically.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<PathBuf, SinkError> {
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
pub fn bundle_bytes(record: &Record) -> Result<Vec<u8>, SinkError> {
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
    fn emit(&self, record: &Record) -> Result<PathBuf, SinkError> {
        self.write_atomic(&record.bundle.file_name(), &bundle_bytes(record)?)
    }
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
