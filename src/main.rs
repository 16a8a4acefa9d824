//! The `kubewire` command line: `run`, `check-config`, `resources`. Exit codes: 0 success,
//! 1 runtime failure (checkpoint store or sink cannot be opened, cluster unreachable for
//! `resources`), 2 invalid configuration, 130 forced stop by a second signal.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kubewire::app;
use kubewire::cluster::{self, Catalog};
use kubewire::config::{Config, LogFormat, Problem, ResourceRef};
use kubewire::telemetry::traces::{self, Traces};
use tokio_util::sync::CancellationToken;

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 2;
const EXIT_FORCED: i32 = 130;
/// How long a graceful exit waits for the last spans to be exported.
const TRACES_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "kubewire",
    version,
    about = "Kubernetes List-Watch to ordered, replayable event streams"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, short, default_value = "config/kubewire.yaml")]
        config: PathBuf,
    },
    /// Load and validate a configuration; print every problem with its path.
    CheckConfig {
        #[arg(long, short, default_value = "config/kubewire.yaml")]
        config: PathBuf,
        /// Skip resolving resources against the clusters (syntax and values only).
        #[arg(long)]
        offline: bool,
    },
    /// List what the cluster serves that can be listed and watched.
    Resources {
        /// A configuration whose first cluster to use; default: KUBECONFIG / in-cluster.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::CheckConfig { config, offline } => check_config(config, offline).await,
            Command::Resources { config } => resources(config).await,
        }
    })
}

/// Logs to stderr, and traces over OTLP when configured (the returned exporter is to be shut
/// down at exit, which flushes it). Must run inside the tokio runtime.
fn init_logging(config: &Config) -> Option<Traces> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // The spans kubewire exports never show in the log.
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBEWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level))
        .add_directive(traces::LOG_DIRECTIVE.parse().expect("valid directive"));
    // Logs go to stderr: stdout belongs to the stdout sink.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let json = match config.log.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let fmt = if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.boxed()
    };
    let settings =
        traces::ExportSettings::resolve(&config.telemetry.otlp, |name| std::env::var(name).ok());
    let (traces, problem) = match settings.as_ref().map(Traces::start) {
        None => (None, None),
        Some(Ok(t)) => (Some(t), None),
        Some(Err(e)) => (None, Some(e)),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(traces.as_ref().map(|t| t.layer()))
        .init();
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

fn print_problems(problems: &[Problem]) {
    for p in problems {
        eprintln!("{p}");
    }
}

async fn run(path: PathBuf) -> ExitCode {
    let config = match Config::load_valid(&path) {
        Ok(c) => c,
        Err(e) => {
            print_problems(&e.problems());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let traces = init_logging(&config);
    let shutdown = CancellationToken::new();
    tokio::spawn(signals(shutdown.clone()));
    let result = app::run(config, shutdown).await;
    if let Some(t) = traces {
        t.shutdown(TRACES_FLUSH_TIMEOUT).await;
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "kubewire failed");
            eprintln!("kubewire: {e}");
            ExitCode::from(EXIT_RUNTIME)
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

async fn check_config(path: PathBuf, offline: bool) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            print_problems(&e.problems());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let mut problems = config.validate();
    if !offline {
        problems.extend(resolve_against_clusters(&config).await);
    }
    if problems.is_empty() {
        println!("{}: valid", path.display());
        ExitCode::SUCCESS
    } else {
        print_problems(&problems);
        ExitCode::from(EXIT_CONFIG)
    }
}

/// Every configured resource must resolve, through discovery, in every cluster.
async fn resolve_against_clusters(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (ci, cluster) in config.clusters().iter().enumerate() {
        let catalog = match connect(cluster).await {
            Ok(c) => c,
            Err(e) => {
                problems.push(Problem::new(format!("clusters[{ci}]"), e.to_string()));
                continue;
            }
        };
        for (ri, rc) in config.resources.iter().enumerate() {
            // Syntax errors were reported by validate().
            let Ok(r) = ResourceRef::parse(&rc.resource) else {
                continue;
            };
            match catalog.resolve(&r) {
                Ok(info) => {
                    if !info.namespaced && !rc.namespaces.is_empty() {
                        problems.push(Problem::new(
                            format!("resources[{ri}].namespaces"),
                            format!(
                                "{} is cluster-scoped: namespaces do not apply",
                                info.qualified_name()
                            ),
                        ));
                    }
                }
                Err(e) => {
                    let path = if config.clusters.len() > 1 {
                        format!("resources[{ri}].resource (cluster {})", cluster.name)
                    } else {
                        format!("resources[{ri}].resource")
                    };
                    problems.push(Problem::new(path, e.to_string()));
                }
            }
        }
    }
    problems
}

async fn connect(
    cluster: &kubewire::config::ClusterConfig,
) -> Result<Catalog, cluster::ClusterError> {
    let client = cluster::connect(cluster).await?;
    Catalog::discover(&cluster.name, &client).await
}

async fn resources(path: Option<PathBuf>) -> ExitCode {
    let cluster = match path {
        Some(p) => match Config::load(&p) {
            Ok(c) => c.clusters().remove(0),
            Err(e) => {
                print_problems(&e.problems());
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => Default::default(),
    };
    let catalog = match connect(&cluster).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kubewire: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    println!(
        "{:<48} {:<36} {:<32} NAMESPACED",
        "NAME", "APIVERSION", "KIND"
    );
    for e in catalog
        .entries()
        .iter()
        .filter(|e| e.preferred && e.watchable())
    {
        println!(
            "{:<48} {:<36} {:<32} {}",
            e.info.qualified_name(),
            e.info.api_version(),
            e.info.kind,
            e.info.namespaced
        );
    }
    ExitCode::SUCCESS
}
