//! Path filters: which files belong in a record. The defaults are roar's own
//! (`FileFilterService` in roar-cli 0.4.7), so a roar-node record and a
//! `roar run` record of the same command list the same files.

use serde::{Deserialize, Serialize};

/// Why a path was left out (roar's category names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Dropped {
    RoarInternal,
    GitMetadata,
    CredentialFiles,
    SystemReads,
    PackageReads,
    TorchCache,
    LibraryCaches,
    TmpFiles,
    WriteNoise,
    IgnorePaths,
}

impl Dropped {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::RoarInternal => "roar_internal",
            Self::GitMetadata => "git_metadata",
            Self::CredentialFiles => "credential_files",
            Self::SystemReads => "system_reads",
            Self::PackageReads => "package_reads",
            Self::TorchCache => "torch_cache",
            Self::LibraryCaches => "library_caches",
            Self::TmpFiles => "tmp_files",
            Self::WriteNoise => "write_noise",
            Self::IgnorePaths => "ignore_paths",
        }
    }
}

const SYSTEM_READ_PREFIXES: &[&str] = &[
    "/sys/", "/etc/", "/sbin/", "/proc/", "/dev/", "/run/", "/usr/", "/opt/", "/lib/", "/lib64/",
];
const TORCH_CACHE_PREFIXES: &[&str] = &["/tmp/torchinductor_", "/tmp/torch_", "/tmp/triton"];
const LIBRARY_CACHE_PATTERNS: &[&str] = &[
    "/.cache/huggingface/",
    "/.cache/pip/",
    "/.cache/uv/",
    "/.cache/poetry/",
    "/.cache/pypoetry/",
    "/.cache/conda/",
    "/.cache/wandb/",
    "/.cache/mlflow/",
    "/.cache/pre-commit/",
    "/.cache/black/",
    "/.cache/mypy/",
    "/.cache/ruff/",
    "/.cache/pylint/",
    "/.cache/yarn/",
    "/.cache/npm/",
    "/.cache/Cypress/",
    "/.cache/torch/",
    "/.cache/triton/",
    "/.triton/cache/",
    "/.cache/jupyter/",
    "/.cache/matplotlib/",
];
const WRITE_NOISE_PREFIXES: &[&str] = &[
    "/dev/",
    "/proc/",
    "/sys/",
    "/tmp/roar-worker-env-",
    "/usr/local/",
    "/usr/lib/",
    "/usr/share/",
    "/opt/",
    "/etc/",
];

/// Filter settings; `Default` is roar's default configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PathFilterConfig {
    pub(crate) ignore_system_reads: bool,
    pub(crate) ignore_package_reads: bool,
    pub(crate) ignore_torch_cache: bool,
    pub(crate) ignore_library_caches: bool,
    pub(crate) ignore_tmp_files: bool,
    /// Absolute prefixes (start with `/`) or substrings to leave out.
    pub(crate) ignore_paths: Vec<String>,
    /// Prefixes always kept, whatever else matches (OSMO's data volumes).
    pub(crate) keep_paths: Vec<String>,
}

impl Default for PathFilterConfig {
    fn default() -> Self {
        Self {
            ignore_system_reads: true,
            ignore_package_reads: true,
            ignore_torch_cache: true,
            ignore_library_caches: true,
            ignore_tmp_files: true,
            ignore_paths: Vec::new(),
            keep_paths: vec!["/osmo/data/input/".into(), "/osmo/data/output/".into()],
        }
    }
}

impl PathFilterConfig {
    /// roar's defaults, overridden by a JSON file, plus extra ignored and
    /// kept paths. Errors name the file and the offending field.
    pub(crate) fn load(
        file: Option<&std::path::Path>,
        ignore: &[String],
        keep: &[String],
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut config = match file {
            None => Self::default(),
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the filter file {}", f.display()))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("invalid filter file {}", f.display()))?
            }
        };
        config.ignore_paths.extend(ignore.iter().cloned());
        config.keep_paths.extend(keep.iter().cloned());
        if let Some(empty) = config
            .ignore_paths
            .iter()
            .chain(&config.keep_paths)
            .find(|p| p.is_empty())
        {
            anyhow::bail!("invalid filter: empty path pattern {empty:?} would match every file");
        }
        Ok(config)
    }
}

/// A filter for one task: the config plus what the task revealed (the
/// Python installations it ran, whose files are package reads).
pub(crate) struct PathFilter<'a> {
    pub(crate) config: &'a PathFilterConfig,
    pub(crate) python_prefixes: Vec<Vec<u8>>,
}

fn starts(path: &[u8], prefix: &str) -> bool {
    path.starts_with(prefix.as_bytes())
}

fn contains(path: &[u8], needle: &str) -> bool {
    let n = needle.as_bytes();
    !n.is_empty() && path.windows(n.len()).any(|w| w == n)
}

fn basename(path: &[u8]) -> &[u8] {
    path.rsplit(|b| *b == b'/').next().unwrap_or(path)
}

impl<'a> PathFilter<'a> {
    pub(crate) fn new(config: &'a PathFilterConfig) -> Self {
        Self {
            config,
            python_prefixes: Vec::new(),
        }
    }

    /// Learns a Python installation from an executable path like
    /// `<prefix>/bin/python3.11`: its `<prefix>` holds the standard
    /// library, which roar counts as package reads (`sys.base_prefix`).
    pub(crate) fn learn_executable(&mut self, exe: &[u8]) {
        let name = basename(exe);
        let is_python = name.starts_with(b"python")
            && name[6..].iter().all(|b| b.is_ascii_digit() || *b == b'.');
        if !is_python {
            return;
        }
        let mut parts: Vec<&[u8]> = exe.split(|b| *b == b'/').collect();
        parts.pop();
        if parts.last() != Some(&&b"bin"[..]) {
            return;
        }
        parts.pop();
        let mut prefix = parts.join(&b'/');
        if prefix.is_empty() {
            return;
        }
        prefix.push(b'/');
        if !self.python_prefixes.contains(&prefix) {
            self.python_prefixes.push(prefix);
        }
    }

    fn kept(&self, path: &[u8]) -> bool {
        self.config.keep_paths.iter().any(|k| starts(path, k))
    }

    fn credential(path: &[u8]) -> bool {
        matches!(basename(path), b".netrc" | b"_netrc")
    }

    fn roar_internal(path: &[u8]) -> bool {
        contains(path, "/.roar/")
            || path.ends_with(b"/.roar")
            || contains(path, "/roar-worker-env-")
    }

    fn git(path: &[u8]) -> bool {
        contains(path, "/.git/")
            || path.ends_with(b"/.git")
            || path.ends_with(b"/.gitconfig")
            || path.ends_with(b"/.gitmodules")
    }

    fn ignored(&self, path: &[u8]) -> bool {
        self.config.ignore_paths.iter().any(|p| {
            if p.starts_with('/') {
                starts(path, p)
            } else {
                contains(path, p)
            }
        })
    }

    fn tmp(path: &[u8]) -> bool {
        starts(path, "/tmp/")
    }

    /// Verdict for a file the task read. `also_written`: the task wrote it
    /// too (a /tmp file it wrote is an intermediate, not an input).
    pub(crate) fn read(&self, path: &[u8], also_written: bool) -> Option<Dropped> {
        let c = self.config;
        if self.kept(path) {
            return None;
        }
        if Self::roar_internal(path) {
            return Some(Dropped::RoarInternal);
        }
        if Self::git(path) {
            return Some(Dropped::GitMetadata);
        }
        if Self::credential(path) {
            return Some(Dropped::CredentialFiles);
        }
        if c.ignore_system_reads && SYSTEM_READ_PREFIXES.iter().any(|p| starts(path, p)) {
            return Some(Dropped::SystemReads);
        }
        if c.ignore_torch_cache && TORCH_CACHE_PREFIXES.iter().any(|p| starts(path, p)) {
            return Some(Dropped::TorchCache);
        }
        if c.ignore_library_caches && LIBRARY_CACHE_PATTERNS.iter().any(|p| contains(path, p)) {
            return Some(Dropped::LibraryCaches);
        }
        if c.ignore_package_reads
            && (contains(path, "site-packages")
                || self.python_prefixes.iter().any(|p| path.starts_with(p)))
        {
            return Some(Dropped::PackageReads);
        }
        if c.ignore_tmp_files && Self::tmp(path) && also_written {
            return Some(Dropped::TmpFiles);
        }
        if self.ignored(path) {
            return Some(Dropped::IgnorePaths);
        }
        None
    }

    /// Verdict for a file the task wrote.
    pub(crate) fn write(&self, path: &[u8]) -> Option<Dropped> {
        let c = self.config;
        if self.kept(path) {
            return None;
        }
        if WRITE_NOISE_PREFIXES.iter().any(|p| starts(path, p))
            || contains(path, "/.roar/")
            || path.ends_with(b".pyc")
        {
            return Some(Dropped::WriteNoise);
        }
        if Self::credential(path) {
            return Some(Dropped::CredentialFiles);
        }
        if c.ignore_torch_cache && TORCH_CACHE_PREFIXES.iter().any(|p| starts(path, p)) {
            return Some(Dropped::TorchCache);
        }
        if c.ignore_library_caches && LIBRARY_CACHE_PATTERNS.iter().any(|p| contains(path, p)) {
            return Some(Dropped::LibraryCaches);
        }
        if c.ignore_tmp_files && Self::tmp(path) {
            return Some(Dropped::TmpFiles);
        }
        if self.ignored(path) {
            return Some(Dropped::IgnorePaths);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roar_defaults() {
        let cfg = PathFilterConfig::default();
        let f = PathFilter::new(&cfg);
        assert_eq!(f.read(b"/usr/lib/x.so", false), Some(Dropped::SystemReads));
        assert_eq!(f.read(b"/etc/passwd", false), Some(Dropped::SystemReads));
        assert_eq!(
            f.read(b"/v/lib/python3.11/site-packages/a.py", false),
            Some(Dropped::PackageReads)
        );
        assert_eq!(
            f.read(b"/home/u/.cache/huggingface/m.bin", false),
            Some(Dropped::LibraryCaches)
        );
        assert_eq!(
            f.read(b"/repo/.git/HEAD", false),
            Some(Dropped::GitMetadata)
        );
        assert_eq!(
            f.read(b"/home/u/.netrc", false),
            Some(Dropped::CredentialFiles)
        );
        // A /tmp file only read is a real (pre-existing) input.
        assert_eq!(f.read(b"/tmp/data.csv", false), None);
        assert_eq!(f.read(b"/tmp/data.csv", true), Some(Dropped::TmpFiles));
        assert_eq!(f.read(b"/data/train.csv", false), None);
        assert_eq!(f.write(b"/tmp/x",), Some(Dropped::TmpFiles));
        assert_eq!(f.write(b"/w/m.pyc"), Some(Dropped::WriteNoise));
        assert_eq!(f.write(b"/etc/hosts"), Some(Dropped::WriteNoise));
        assert_eq!(f.write(b"/data/model.pt"), None);
        // OSMO data volumes are always kept.
        assert_eq!(f.read(b"/osmo/data/input/0/x", false), None);
    }

    #[test]
    fn python_prefix_from_executable() {
        let cfg = PathFilterConfig::default();
        let mut f = PathFilter::new(&cfg);
        f.learn_executable(b"/root/.pyenv/versions/3.11.7/bin/python3.11");
        f.learn_executable(b"/usr/bin/bash");
        assert_eq!(
            f.python_prefixes,
            vec![b"/root/.pyenv/versions/3.11.7/".to_vec()]
        );
        assert_eq!(
            f.read(b"/root/.pyenv/versions/3.11.7/lib/python3.11/os.py", false),
            Some(Dropped::PackageReads)
        );
    }

    #[test]
    fn user_ignore_paths() {
        let cfg = PathFilterConfig {
            ignore_paths: vec!["/scratch/".into(), "wandb".into()],
            ..PathFilterConfig::default()
        };
        let f = PathFilter::new(&cfg);
        assert_eq!(f.write(b"/scratch/a"), Some(Dropped::IgnorePaths));
        assert_eq!(
            f.read(b"/w/wandb/run.log", false),
            Some(Dropped::IgnorePaths)
        );
    }
}
