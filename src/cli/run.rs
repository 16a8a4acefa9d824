//! `kubewire run`: the daemon, its signals and its exit code.

use tokio_util::sync::CancellationToken;

use super::{CliError, EXIT_FORCED, EXIT_OK, Global};
use crate::app;

/// How long a graceful exit waits for the last spans to be exported.
const TRACES_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the daemon until SIGTERM/SIGINT (exit 0) or a failure (exit 1).
pub async fn run(global: &Global) -> Result<u8, CliError> {
    let loaded = super::load(global)?;
    let traces = super::logging::init_run(global, &loaded.config);
    tracing::info!(
        path = %loaded.path.display(),
        from = loaded.origin.as_str(),
        version = super::version(),
        "configuration loaded"
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let result = app::run(loaded.config, shutdown).await;
    if let Some(t) = traces {
        t.shutdown(TRACES_FLUSH_TIMEOUT).await;
    }
    match result {
        Ok(()) => Ok(EXIT_OK),
        Err(e) => {
            tracing::error!(error = %e, "kubewire failed");
            Err(CliError::Failure(e.to_string()))
        }
    }
}

/// First SIGTERM/SIGINT: graceful drain. Second: exit at once (the checkpoint only ever
/// holds acknowledged versions, so this replays, never loses).
async fn signals(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    for n in 0..2 {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        if n == 0 {
            tracing::info!("signal received: stopping (send again to force)");
            shutdown.cancel();
        } else {
            tracing::warn!("second signal: exiting now");
            // The one place that may exit at once: the operator asked twice.
            #[allow(clippy::disallowed_methods)]
            std::process::exit(EXIT_FORCED);
        }
    }
}
