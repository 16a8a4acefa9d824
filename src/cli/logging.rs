//! Logging set-up: to standard error (stdout belongs to the stdout sink, `tail` and the
//! listings), text on a terminal and JSON otherwise unless told, and OTLP traces for `run`.
//!
//! One convention for the filter, everywhere: `--log-level` wins, then `RUST_LOG`, then the
//! configuration's `log.level` (for `run`; the other commands default to `warn`).

use std::io::IsTerminal;

use crate::config::{Config, LogFormat};
use crate::telemetry::traces::{self, Traces};

use super::{Global, LogFormatArg};

/// The variable whose filter wins over `log.level`.
pub const LOG_ENV: &str = "RUST_LOG";

/// The log filter and where it came from: `--log-level`, else `RUST_LOG` (when set and not
/// empty), else `fallback`.
pub fn filter<'a>(
    flag: Option<&'a str>,
    env: Option<&'a str>,
    fallback: &'a str,
) -> (&'a str, &'static str) {
    if let Some(f) = flag {
        return (f, "--log-level");
    }
    if let Some(e) = env.filter(|e| !e.trim().is_empty()) {
        return (e, LOG_ENV);
    }
    (fallback, "log.level")
}

/// Whether to log JSON: `--log-format`, else `log.format`; `auto` is JSON unless standard
/// error is a terminal.
pub fn json(flag: Option<LogFormatArg>, config: LogFormat, terminal: bool) -> bool {
    let format = match flag {
        Some(LogFormatArg::Auto) => LogFormat::Auto,
        Some(LogFormatArg::Text) => LogFormat::Text,
        Some(LogFormatArg::Json) => LogFormat::Json,
        None => config,
    };
    match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !terminal,
    }
}

/// Logs for `run`: the configuration's settings under the flags and `RUST_LOG`, and traces
/// over OTLP when configured (the returned exporter is to be shut down at exit, which
/// flushes it). Must run inside the tokio runtime.
pub fn init_run(global: &Global, config: &Config) -> Option<Traces> {
    let settings =
        traces::ExportSettings::resolve(&config.telemetry.otlp, |name| std::env::var(name).ok());
    let (traces, problem) = match settings.as_ref().map(Traces::start) {
        None => (None, None),
        Some(Ok(t)) => (Some(t), None),
        Some(Err(e)) => (None, Some(e)),
    };
    init(
        global,
        &config.log.level,
        config.log.format,
        traces.as_ref(),
    );
    match (&traces, problem, &settings) {
        (Some(t), _, Some(s)) => {
            tracing::info!(endpoint = t.endpoint(), service_name = %s.service_name, "exporting traces over OTLP")
        }
        // Telemetry never stops the pipeline: run without traces.
        (_, Some(e), _) => tracing::error!(error = %e, "traces disabled"),
        _ => {}
    }
    traces
}

/// Logs for the commands other than `run`: warnings and errors unless told otherwise.
pub fn init_command(global: &Global) {
    init(global, "warn", LogFormat::Auto, None);
}

fn init(global: &Global, level: &str, format: LogFormat, traces: Option<&Traces>) {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let env = std::env::var(LOG_ENV).ok();
    let (directives, from) = filter(global.log_level.as_deref(), env.as_deref(), level);
    let (filter, bad) = match tracing_subscriber::EnvFilter::try_new(directives) {
        Ok(f) => (f, None),
        Err(e) => (tracing_subscriber::EnvFilter::new("info"), Some(e)),
    };
    // The spans kubewire exports never show in the log.
    let filter = filter.add_directive(traces::LOG_DIRECTIVE.parse().expect("valid directive"));
    let terminal = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(terminal);
    let fmt = if json(global.log_format, format, terminal) {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let _ = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(traces.map(|t| t.layer()))
        .try_init();
    if let Some(e) = bad {
        tracing::warn!(filter = directives, from, error = %e, "invalid log filter; logging at info");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_rust_log_which_wins_over_the_configuration() {
        assert_eq!(
            filter(Some("debug"), Some("trace"), "info"),
            ("debug", "--log-level")
        );
        assert_eq!(filter(None, Some("trace"), "info"), ("trace", "RUST_LOG"));
        assert_eq!(filter(None, Some(""), "info"), ("info", "log.level"));
        assert_eq!(filter(None, None, "warn"), ("warn", "log.level"));
    }

    #[test]
    fn the_format_flag_wins_and_auto_follows_the_terminal() {
        assert!(json(Some(LogFormatArg::Json), LogFormat::Text, true));
        assert!(!json(Some(LogFormatArg::Text), LogFormat::Json, false));
        assert!(json(None, LogFormat::Auto, false));
        assert!(!json(None, LogFormat::Auto, true));
        assert!(!json(Some(LogFormatArg::Auto), LogFormat::Json, true));
    }
}
