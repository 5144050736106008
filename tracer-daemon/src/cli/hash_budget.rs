//! What hashing one file may cost (both `run` and `daemon`).

use std::time::Duration;

use clap::Args;

use crate::records::hashing::HashBudget;

#[derive(Debug, Args)]
pub(crate) struct HashBudgetArgs {
    /// Longest one file may take to hash, in seconds; past it the file is
    /// recorded unhashed, with the reason.
    #[arg(long, default_value_t = 600.0, env = "ROAR_NODE_HASH_TIMEOUT_SECS")]
    hash_timeout_secs: f64,
    /// Largest file hashed, in bytes; a bigger one is recorded unhashed.
    #[arg(long, default_value_t = 1 << 40, env = "ROAR_NODE_HASH_MAX_BYTES")]
    hash_max_bytes: u64,
    /// Longest one read may block, in seconds, before its file system is
    /// taken for hung (a network or FUSE mount that stopped answering):
    /// the file is recorded unhashed, the blocked hashing thread is
    /// abandoned and replaced, and other files of that file system are
    /// not tried while it stays blocked.
    #[arg(long, default_value_t = 60.0, env = "ROAR_NODE_HASH_STALL_SECS")]
    hash_stall_secs: f64,
}

impl HashBudgetArgs {
    pub(crate) fn budget(&self) -> anyhow::Result<HashBudget> {
        let secs = |name: &str, v: f64| {
            Duration::try_from_secs_f64(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| anyhow::anyhow!("--{name} must be a positive number of seconds"))
        };
        Ok(HashBudget {
            time: secs("hash-timeout-secs", self.hash_timeout_secs)?,
            bytes: self.hash_max_bytes,
            stall: secs("hash-stall-secs", self.hash_stall_secs)?,
        })
    }
}
