//! Log output: text for a person at a terminal, JSON lines for a log
//! collector (the DaemonSet). Which lines appear is `RUST_LOG`'s business
//! either way (default `warn`).

use std::io::IsTerminal;

use tracing::Subscriber;
use tracing_subscriber::{EnvFilter, fmt, fmt::MakeWriter, util::SubscriberInitExt};

/// Environment variable of `--log-format`.
pub(crate) const LOG_FORMAT_ENV: &str = "ROAR_NODE_LOG_FORMAT";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines (colored on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, the
    /// message and every field at the top level, so a collector can index
    /// `task` or `cgroup` without parsing text.
    Json,
}

/// Installs the global subscriber (and routes the `log` crate's records,
/// e.g. from dependencies, into it). A second call does nothing.
pub(crate) fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    let ansi = std::io::stderr().is_terminal();
    let _ = subscriber(format, filter, std::io::stderr, ansi).try_init();
}

/// The subscriber `init` installs, writing to `writer`: separate so tests
/// can read what a line looks like.
pub(crate) fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let builder = fmt().with_env_filter(filter).with_writer(writer);
    match format {
        LogFormat::Text => Box::new(builder.with_ansi(ansi).finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                // The span list repeats the current span's ancestors on
                // every line; the daemon's context is in fields instead.
                .with_span_list(false)
                .finish(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn capture(format: LogFormat, filter: &str, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let out = buf.clone();
        let sub = subscriber(format, EnvFilter::new(filter), move || out.clone(), false);
        tracing::subscriber::with_default(sub, f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn json_lines_have_timestamp_level_target_and_flat_fields() {
        let text = capture(LogFormat::Json, "info", || {
            tracing::info!(task = "uid:main:0:0", cgroup = 42u64, "task resolved");
            tracing::debug!("filtered out by RUST_LOG");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert!(
            v["timestamp"].as_str().is_some_and(|t| t.contains('T')),
            "{v}"
        );
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], module_path!());
        assert_eq!(v["message"], "task resolved");
        assert_eq!(v["task"], "uid:main:0:0");
        assert_eq!(v["cgroup"], 42);
        assert!(v.get("fields").is_none(), "fields are flattened: {v}");
    }

    #[test]
    fn text_lines_are_plain_and_filtered() {
        let text = capture(LogFormat::Text, "warn", || {
            tracing::warn!(error = "boom", "pod watch error (retrying)");
            tracing::info!("filtered out");
        });
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("WARN"), "{text}");
        assert!(
            text.contains("pod watch error (retrying) error=\"boom\""),
            "{text}"
        );
        assert!(
            !text.contains('\u{1b}'),
            "no color codes when not asked: {text}"
        );
    }
}
