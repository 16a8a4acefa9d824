//! The command line, the stage *before* the data flow: the commands (`run`, `check-config`,
//! `resources`, `print-config`, `state`, `verify`, `tail`, `completions`), their flags and exit codes,
//! where the configuration file is found, and logging set-up. `main` only parses and calls
//! [`main`]; each command lives in a module of its own here, its pure parts tested there.
//!
//! Exit codes: [`EXIT_OK`] 0, [`EXIT_FAILURE`] 1 (a runtime failure; for `verify`, also
//! discrepancies), [`EXIT_USAGE`] 2 (invalid configuration or usage), [`EXIT_FORCED`] 130.

pub mod check;
pub mod logging;
pub mod paths;
pub mod print_config;
pub mod resources;
pub mod run;
pub mod source;
pub mod state;
pub mod tail;
pub mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

use crate::config::{Config, Problem};

/// Success: `run` stopped gracefully, `verify` found no discrepancy, ...
pub const EXIT_OK: u8 = 0;
/// A runtime failure (the checkpoint store, the sink or a cluster cannot be used); for
/// `verify`, also: discrepancies found.
pub const EXIT_FAILURE: u8 = 1;
/// Invalid configuration (every problem is printed) or usage.
pub const EXIT_USAGE: u8 = 2;
/// `run`: forced stop by a second SIGTERM/SIGINT during the drain.
pub const EXIT_FORCED: i32 = 130;

/// Errors of the command line stage: what ends a command with an exit code and a message.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The configuration is invalid: every problem (exit 2).
    #[error("invalid configuration")]
    Config(Vec<Problem>),
    /// The command was used wrongly (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Something could not be done (exit 1).
    #[error("{0}")]
    Failure(String),
}

impl CliError {
    /// The exit code this error ends the command with.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => EXIT_USAGE,
            CliError::Failure(_) => EXIT_FAILURE,
        }
    }

    /// Prints the error to standard error.
    pub fn print(&self) {
        match self {
            CliError::Config(problems) => {
                for p in problems {
                    eprintln!("{p}");
                }
            }
            other => eprintln!("kubewire: {other}"),
        }
    }
}

const ENVIRONMENT_AND_EXIT_CODES: &str = "\
Environment:
  KUBEWIRE_CONFIG           the configuration file when --config is not given
  KUBEWIRE__SECTION__FIELD  overrides one configuration field, e.g. KUBEWIRE__SINK__TYPE=file
                            (docs/configuration.md, Environment overrides)
  RUST_LOG                  log filter; wins over log.level, loses to --log-level
  KUBECONFIG                kubeconfig of clusters without their own (after --kubeconfig)
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_SERVICE_NAME,
  OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER
                            trace export (docs/operations.md, Traces)
  POD_NAMESPACE, HOSTNAME   leader election's Lease namespace and identity defaults
  KUBEWIRE_BUILD_COMMIT     (build time) the commit --version reports where .git is absent

Configuration file, when --config is not given: $KUBEWIRE_CONFIG, else
/etc/kubewire/kubewire.yaml if it exists, else config/kubewire.yaml.

Exit codes:
  0    success; run: after a graceful stop (SIGTERM/SIGINT: drain, checkpoint, exit);
       verify: the stream matches the cluster
  1    runtime failure (checkpoint store, sink or cluster cannot be used; a cluster that
       cannot be reached); verify: discrepancies found
  2    invalid configuration (every problem is printed) or wrong usage
  130  run: forced stop by a second SIGTERM/SIGINT during the drain";

/// kubewire's command line.
#[derive(Debug, Parser)]
#[command(
    name = "kubewire",
    about = "Kubernetes List-Watch to ordered, replayable event streams",
    long_about = "kubewire watches Kubernetes resources and publishes every Added / Modified / \
                  Deleted change as a CloudEvent to stdout, a file, Kafka or NATS JetStream, \
                  in order per object, resuming from its checkpoint. `verify` proves a stream \
                  complete against the cluster; `tail` shows it.",
    after_long_help = ENVIRONMENT_AND_EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    /// Flags of every command.
    #[command(flatten)]
    pub global: Global,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes (before or after its name).
#[derive(Debug, Clone, Default, Args)]
pub struct Global {
    /// The configuration file (YAML or TOML, by extension). Default: $KUBEWIRE_CONFIG, else
    /// /etc/kubewire/kubewire.yaml if it exists, else config/kubewire.yaml.
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// kubeconfig file for the clusters that do not name their own (and the default
    /// cluster). Default: KUBECONFIG, ~/.kube/config, then in-cluster.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context for the clusters that do not name their own. Default: the
    /// kubeconfig's current context.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Log filter: a level (debug) or tracing directives (info,kubewire::watch=debug).
    /// Wins over RUST_LOG and log.level. Default for run: log.level (info); for the other
    /// commands: warn.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Log line format on standard error. Wins over log.format.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: watch the configured resources and publish their changes.
    Run,
    /// Load and validate the configuration; print every problem with its path.
    ///
    /// Checks syntax, unknown fields and values; and unless --offline, that the secrets and
    /// files the configuration names exist and are readable (never printing them), that
    /// every ${NAME} is set, and that every resource resolves in every cluster. Exit 0
    /// valid, 2 invalid, 1 a cluster cannot be reached (named).
    CheckConfig {
        /// Syntax and values only: no clusters, no secrets, no files (e.g. for a
        /// configuration meant for another machine).
        #[arg(long)]
        offline: bool,
    },
    /// List what the clusters serve that can be listed and watched.
    ///
    /// Without a configuration file (none at the default paths), lists the cluster of
    /// KUBECONFIG / --kubeconfig. Exit 1 when a cluster cannot be reached.
    Resources {
        /// Output format: table (name, apiVersion, kind, namespaced), wide (also verbs,
        /// group, version and whether it is the preferred version), json.
        #[arg(long, short = 'o', value_enum, default_value_t = ResourcesOutput::Table)]
        output: ResourcesOutput,
        /// Only this configured cluster (default: every configured cluster).
        #[arg(long, value_name = "NAME")]
        cluster: Option<String>,
    },
    /// Print the effective configuration: after defaults, KUBEWIRE__* overrides and flags,
    /// with secrets masked and where each non-default value came from.
    PrintConfig {
        /// yaml (commented with the origin of each non-default value) or json
        /// ({"config": ..., "origins": {path: file|environment|flag}}).
        #[arg(long, short = 'o', value_enum, default_value_t = PrintOutput::Yaml)]
        output: PrintOutput,
    },
    /// Compare a published stream with the cluster: missing, stale, ghosts, order.
    ///
    /// Reads the stream as a consumer would (a file, a Kafka topic or pattern, a NATS
    /// stream), keeps the latest state per object, lists the configured resources (or
    /// --resource ones) and reports objects missing downstream, stale (another version than
    /// the cluster's), ghosts (alive downstream, gone from the cluster), per-object order
    /// violations and the relist markers that announce compressed history. Versions newer
    /// than the cluster read are not discrepancies (the stream may still be written). Exit 0
    /// clean, 1 discrepancies (or the stream or a cluster cannot be read), 2 usage.
    Verify(verify::VerifyArgs),
    /// Print a published stream, one line per event (or the CloudEvents with -o json).
    Tail(tail::TailArgs),
    /// Inspect or change what the configured state backend holds per stream.
    State {
        /// What to do.
        #[command(subcommand)]
        action: StateAction,
    },
    /// Print a shell completion script: `source <(kubewire completions bash)`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
}

/// `kubewire state …`.
#[derive(Debug, Subcommand)]
pub enum StateAction {
    /// Every stream with its resourceVersion, index size and whether the configuration
    /// still makes it (orphaned: a changed selector, namespace or resource), and when the
    /// state was last written. Exit 1 when the backend cannot be read.
    Show {
        /// table or json.
        #[arg(long, short = 'o', value_enum, default_value_t = StateOutput::Table)]
        output: StateOutput,
    },
    /// Remove streams from the state: each starts over with a fresh snapshot the next time
    /// it runs. With the Kafka backend this fences a running leader, which steps down; the
    /// embedded store must not be in use. Asks first (exit 2 when not confirmed).
    Reset {
        /// A stream key, as `state show` prints it (repeatable).
        #[arg(long = "stream", value_name = "KEY")]
        streams: Vec<String>,
        /// Every stream `state show` marks orphaned.
        #[arg(long)]
        orphaned: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// `state show -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateOutput {
    /// STREAM, RESOURCEVERSION, OBJECTS, ORPHANED.
    Table,
    /// The report as JSON.
    Json,
}

/// `resources -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ResourcesOutput {
    /// NAME, APIVERSION, KIND, NAMESPACED.
    Table,
    /// The table plus GROUP, VERSION, PREFERRED, VERBS.
    Wide,
    /// A JSON array.
    Json,
}

/// `print-config -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PrintOutput {
    /// YAML with origin comments.
    Yaml,
    /// JSON.
    Json,
}

/// `completions SHELL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// `kubewire 0.1.0 (commit …, rustc …, librdkafka …)`, computed once.
pub fn version() -> &'static str {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    VERSION.get_or_init(|| {
        let (_, librdkafka) = rdkafka::util::get_rdkafka_version();
        format!(
            "{} (commit {}, {}, librdkafka {librdkafka})",
            env!("CARGO_PKG_VERSION"),
            env!("KUBEWIRE_COMMIT"),
            env!("KUBEWIRE_RUSTC"),
        )
    })
}

/// The clap command with the full version string.
pub fn command() -> clap::Command {
    Cli::command().version(version())
}

/// Parses the process's arguments (exits 2 with usage on bad ones, 0 on --help/--version).
pub fn parse() -> Cli {
    let matches = command().get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// Runs the command line: parse, dispatch, exit code.
pub fn main() -> ExitCode {
    let cli = parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubewire: cannot start the tokio runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let Cli { global, command } = cli;
    let result = runtime.block_on(async move {
        match command {
            Command::Run => run::run(&global).await,
            Command::CheckConfig { offline } => check::check_config(&global, offline).await,
            Command::Resources { output, cluster } => {
                resources::resources(&global, output, cluster.as_deref()).await
            }
            Command::PrintConfig { output } => print_config::print_config(&global, output),
            Command::Verify(args) => verify::verify(&global, args).await,
            Command::Tail(args) => tail::tail(&global, args).await,
            Command::State { action } => state::state(&global, action).await,
            Command::Completions { shell } => {
                let mut script = Vec::new();
                completions(shell, &mut script);
                use std::io::Write as _;
                // A closed pipe (`| head`) is the reader's choice, not an error.
                let _ = std::io::stdout().write_all(&script);
                Ok(EXIT_OK)
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            e.print();
            ExitCode::from(e.exit_code())
        }
    }
}

/// Writes the completion script for `shell`.
pub fn completions(shell: Shell, out: &mut dyn std::io::Write) {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut command(), "kubewire", out);
}

/// The configuration as a command uses it: found ([`paths::resolve_config_path`]), loaded
/// with the environment's overrides, the global `--kubeconfig` / `--context` applied to the
/// clusters that do not name their own.
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Where it came from.
    pub path: PathBuf,
    /// Why that path.
    pub origin: paths::ConfigOrigin,
}

/// Loads and validates the configuration (problems: exit 2).
pub fn load(global: &Global) -> Result<Loaded, CliError> {
    let l = load_unvalidated(global)?;
    let problems = l.config.validate();
    if problems.is_empty() {
        Ok(l)
    } else {
        Err(CliError::Config(problems))
    }
}

/// Loads the configuration without validating it.
pub fn load_unvalidated(global: &Global) -> Result<Loaded, CliError> {
    let (path, origin) = paths::resolve_config_path(
        global.config.as_deref(),
        std::env::var("KUBEWIRE_CONFIG").ok().as_deref(),
        &|p| p.exists(),
    );
    let mut config = Config::load(&path).map_err(|e| CliError::Config(e.problems()))?;
    apply_cluster_flags(&mut config, global);
    Ok(Loaded {
        config,
        path,
        origin,
    })
}

/// `--kubeconfig` / `--context` for every cluster that does not set its own.
pub fn apply_cluster_flags(config: &mut Config, global: &Global) {
    for c in &mut config.clusters {
        if c.kubeconfig.is_none() {
            c.kubeconfig.clone_from(&global.kubeconfig);
        }
        if c.context.is_none() {
            c.context.clone_from(&global.context);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let matches = command().try_get_matches_from(args)?;
        Cli::from_arg_matches(&matches)
    }

    #[test]
    fn the_command_line_is_well_formed() {
        command().debug_assert();
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let a = parse(&["kubewire", "--config", "a.yaml", "run"]).unwrap();
        let b = parse(&["kubewire", "run", "--config", "a.yaml"]).unwrap();
        assert_eq!(a.global.config, b.global.config);
        let c = parse(&[
            "kubewire",
            "verify",
            "--kubeconfig",
            "k",
            "--context",
            "x",
            "--log-level",
            "debug",
            "--log-format",
            "json",
            "--file",
            "e.jsonl",
        ])
        .unwrap();
        assert_eq!(
            c.global.kubeconfig.as_deref(),
            Some(std::path::Path::new("k"))
        );
        assert_eq!(c.global.context.as_deref(), Some("x"));
        assert_eq!(c.global.log_level.as_deref(), Some("debug"));
        assert_eq!(c.global.log_format, Some(LogFormatArg::Json));
    }

    #[test]
    fn the_version_names_the_commit_the_compiler_and_librdkafka() {
        let v = version();
        assert!(v.starts_with(env!("CARGO_PKG_VERSION")), "{v}");
        assert!(v.contains("(commit "), "{v}");
        assert!(v.contains("rustc "), "{v}");
        assert!(v.contains("librdkafka 2."), "{v}");
    }

    #[test]
    fn cluster_flags_fill_in_only_what_a_cluster_does_not_set() {
        let mut config = Config::default();
        config.clusters.push(crate::config::ClusterConfig {
            name: "own".into(),
            kubeconfig: Some("own.kubeconfig".into()),
            context: Some("own-ctx".into()),
            ..Default::default()
        });
        let global = Global {
            kubeconfig: Some("flag.kubeconfig".into()),
            context: Some("flag-ctx".into()),
            ..Default::default()
        };
        apply_cluster_flags(&mut config, &global);
        assert_eq!(
            config.clusters[0].kubeconfig.as_deref(),
            Some(std::path::Path::new("flag.kubeconfig"))
        );
        assert_eq!(config.clusters[0].context.as_deref(), Some("flag-ctx"));
        assert_eq!(
            config.clusters[1].kubeconfig.as_deref(),
            Some(std::path::Path::new("own.kubeconfig"))
        );
        assert_eq!(config.clusters[1].context.as_deref(), Some("own-ctx"));
    }

    #[test]
    fn completions_are_generated_for_each_shell() {
        for (shell, marker) in [
            (Shell::Bash, "complete -F"),
            (Shell::Zsh, "#compdef kubewire"),
            (Shell::Fish, "complete -c kubewire"),
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(
                text.contains(marker),
                "{shell:?}: {}",
                &text[..200.min(text.len())]
            );
            assert!(
                text.contains("verify") && text.contains("print-config"),
                "{shell:?}"
            );
        }
    }
}
