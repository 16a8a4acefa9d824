//! `kubewire state show|reset`: what the configured state backend holds per stream, and the
//! removal of streams from it (the work is `app::state`; this is its command line).

use super::{CliError, EXIT_OK, Global, StateAction, StateOutput};
use crate::app::state::{self, StateReport};

/// Runs `kubewire state …`.
pub async fn state(global: &Global, action: StateAction) -> Result<u8, CliError> {
    super::logging::init_command(global);
    let loaded = super::load(global)?;
    let config = &loaded.config;
    let failure = |e: crate::app::AppError| CliError::Failure(e.to_string());
    match action {
        StateAction::Show { output } => {
            let report = state::show(config).await.map_err(failure)?;
            match output {
                StateOutput::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("a report serializes")
                ),
                StateOutput::Table => print!("{}", render(&report)),
            }
            Ok(EXIT_OK)
        }
        StateAction::Reset {
            streams,
            orphaned,
            yes,
        } => {
            let mut chosen = streams;
            if orphaned {
                let report = state::show(config).await.map_err(failure)?;
                chosen.extend(
                    report
                        .streams
                        .into_iter()
                        .filter(|s| s.orphaned == Some(true))
                        .map(|s| s.stream),
                );
                if chosen.is_empty() {
                    println!("no orphaned streams");
                    return Ok(EXIT_OK);
                }
            }
            if chosen.is_empty() {
                return Err(CliError::Usage(
                    "state reset: name streams with --stream KEY, or pass --orphaned (see kubewire state show)".into(),
                ));
            }
            if !yes && !confirm(&chosen) {
                return Err(CliError::Usage(
                    "state reset: not confirmed; nothing changed (--yes skips the question)".into(),
                ));
            }
            let removed = state::remove(config, &chosen).await.map_err(failure)?;
            for s in &chosen {
                if removed.contains(s) {
                    println!("removed {s}");
                } else {
                    println!("not in the state: {s}");
                }
            }
            Ok(EXIT_OK)
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

/// The table `state show` prints (pure).
pub fn render(report: &StateReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "backend: {} ({}), last commit: {}",
        report.backend,
        report.location,
        report.last_commit.as_deref().unwrap_or("never")
    );
    let _ = writeln!(
        out,
        "{:<72} {:>16} {:>8} ORPHANED",
        "STREAM", "RESOURCEVERSION", "OBJECTS"
    );
    for s in &report.streams {
        let _ = writeln!(
            out,
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
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::state::StreamState;

    #[test]
    fn the_table_names_the_backend_and_marks_orphans() {
        let report = StateReport {
            backend: "kafka",
            location: "topic kw-state".into(),
            last_commit: None,
            streams: vec![
                StreamState {
                    stream: "c|/configmaps|ns||".into(),
                    resource_version: Some("42".into()),
                    objects: 3,
                    orphaned: Some(false),
                },
                StreamState {
                    stream: "c|/configmaps|old||".into(),
                    resource_version: None,
                    objects: 1,
                    orphaned: Some(true),
                },
            ],
        };
        let t = render(&report);
        assert!(
            t.starts_with("backend: kafka (topic kw-state), last commit: never\n"),
            "{t}"
        );
        let rows: Vec<&str> = t.lines().skip(2).collect();
        assert!(rows[0].contains("42") && rows[0].ends_with(" no"), "{t}");
        assert!(rows[1].contains(" - ") && rows[1].ends_with(" yes"), "{t}");
    }
}
