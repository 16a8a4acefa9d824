//! The `kubewire` command line: `run`, `check-config`, `resources`, `state`. Exit codes: 0 success,
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
    /// Inspect or change what the configured state backend holds per stream.
    State {
        #[command(subcommand)]
        action: StateAction,
    },
}

#[derive(Subcommand)]
enum StateAction {
    /// Every stream with its resourceVersion, index size and whether the configuration
    /// still makes it (orphaned streams: a changed selector, namespace or resource).
    Show {
        #[arg(long, short, default_value = "config/kubewire.yaml")]
        config: PathBuf,
        /// `table` or `json`.
        #[arg(long, short, default_value = "table")]
        output: OutputFormat,
    },
    /// Remove streams from the state: each starts over with a fresh snapshot the next time
    /// it runs. With the Kafka backend this fences a running leader, which steps down.
    Reset {
        #[arg(long, short, default_value = "config/kubewire.yaml")]
        config: PathBuf,
        /// A stream key, as `state show` prints it (repeatable).
        #[arg(long = "stream")]
        streams: Vec<String>,
        /// Every stream `state show` marks orphaned.
        #[arg(long)]
        orphaned: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async move {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::CheckConfig { config, offline } => check_config(config, offline).await,
            Command::Resources { config } => resources(config).await,
            Command::State { action } => state(action).await,
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

/// Logs of a one-shot command: warnings and errors only, to stderr.
fn init_quiet_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KUBEWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .try_init();
}

async fn state(action: StateAction) -> ExitCode {
    init_quiet_logging();
    let path = match &action {
        StateAction::Show { config, .. } | StateAction::Reset { config, .. } => config.clone(),
    };
    let config = match Config::load_valid(&path) {
        Ok(c) => c,
        Err(e) => {
            print_problems(&e.problems());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match action {
        StateAction::Show { output, .. } => match app::state::show(&config).await {
            Ok(report) => {
                match output {
                    OutputFormat::Json => println!(
                        "{}",
                        serde_json::to_string_pretty(&report).expect("a report serializes")
                    ),
                    OutputFormat::Table => print_state(&report),
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kubewire: {e}");
                ExitCode::from(EXIT_RUNTIME)
            }
        },
        StateAction::Reset {
            streams,
            orphaned,
            yes,
            ..
        } => {
            let mut chosen = streams;
            if orphaned {
                match app::state::show(&config).await {
                    Ok(report) => chosen.extend(
                        report
                            .streams
                            .into_iter()
                            .filter(|s| s.orphaned == Some(true))
                            .map(|s| s.stream),
                    ),
                    Err(e) => {
                        eprintln!("kubewire: {e}");
                        return ExitCode::from(EXIT_RUNTIME);
                    }
                }
            }
            if chosen.is_empty() {
                eprintln!(
                    "kubewire state reset: name streams with --stream KEY, or pass --orphaned (see kubewire state show)"
                );
                return ExitCode::from(if orphaned { 0 } else { EXIT_CONFIG });
            }
            if !yes && !confirm(&chosen) {
                eprintln!(
                    "kubewire state reset: not confirmed; nothing changed (--yes skips the question)"
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            match app::state::remove(&config, &chosen).await {
                Ok(removed) => {
                    for s in &chosen {
                        if removed.contains(s) {
                            println!("removed {s}");
                        } else {
                            println!("not in the state: {s}");
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kubewire: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
    }
}

/// Asks on the terminal; `false` when there is none to ask on.
fn confirm(streams: &[String]) -> bool {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprintln!("These streams will start over with a fresh snapshot:");
    for s in streams {
        eprintln!("  {s}");
    }
    eprint!("Type yes to remove them: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).is_ok() && line.trim() == "yes"
}

fn print_state(report: &app::state::StateReport) {
    println!(
        "backend: {} ({}), last commit: {}",
        report.backend,
        report.location,
        report.last_commit.as_deref().unwrap_or("never")
    );
    println!(
        "{:<72} {:>16} {:>8} ORPHANED",
        "STREAM", "RESOURCEVERSION", "OBJECTS"
    );
    for s in &report.streams {
        println!(
            "{:<72} {:>16} {:>8} {}",
            s.stream,
            s.resource_version.as_deref().unwrap_or("-"),
            s.objects,
            match s.orphaned {
                Some(true) => "yes",
                Some(false) => "no",
                None => "unknown",
            }
        );
    }
}
