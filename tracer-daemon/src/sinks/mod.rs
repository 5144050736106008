//! Where finished records go. Each sink is one small implementation of
//! `Sink`.

pub mod bundle;

use std::path::PathBuf;

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
