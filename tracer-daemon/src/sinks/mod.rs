//! Where finished records go. Each sink is one small implementation of
//! `Sink`.

pub mod bundle;
pub mod spool;

use std::path::{Path, PathBuf};

use crate::records::Record;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the record: {0}")]
    Encode(#[from] serde_json::Error),
}

pub trait Sink: Send + Sync {
    /// Stores one record durably; returns where.
    fn emit(&self, record: &Record) -> Result<PathBuf, SinkError>;
}

/// Where a record went when its sink failed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the record could not be written ({primary}); it was kept in {kept} instead")]
    Kept { primary: SinkError, kept: PathBuf },
    #[error("the record could not be written ({primary}) nor kept in {} ({fallback})", .dir.display())]
    Lost {
        primary: SinkError,
        dir: PathBuf,
        fallback: SinkError,
    },
}

/// Emits to `sink`; if that fails (directory full, read-only, removed),
/// keeps the record in `fallback_dir` so it is not lost, and says where.
pub fn emit_or_keep(
    sink: &dyn Sink,
    fallback_dir: &Path,
    record: &Record,
) -> Result<PathBuf, DeliveryError> {
    let primary = match sink.emit(record) {
        Ok(path) => return Ok(path),
        Err(e) => e,
    };
    match bundle::BundleDir::new(fallback_dir).and_then(|d| d.emit(record)) {
        Ok(kept) => Err(DeliveryError::Kept { primary, kept }),
        Err(fallback) => Err(DeliveryError::Lost {
            primary,
            dir: fallback_dir.to_path_buf(),
            fallback,
        }),
    }
}
