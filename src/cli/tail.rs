//! `kubewire tail`: prints a published stream, one line per event for people
//! (`crate::consume::pretty`) or the CloudEvents documents themselves (`-o json`), filtered
//! by kind, namespace, name and type; `--follow` waits for more.

use std::io::Write;

use clap::{Args, ValueEnum};

use super::source::{SourceArgs, config_for, resolve};
use super::{CliError, EXIT_OK, Global};
use crate::consume::pretty::Pretty;
use crate::consume::reader::Reader;
use crate::consume::{EventView, Item, Kind, glob_match};

/// `kubewire tail`'s flags.
#[derive(Debug, Clone, Args)]
pub struct TailArgs {
    /// Where the stream is (default: the configuration's sink).
    #[command(flatten)]
    pub source: SourceArgs,
    /// After what is there, wait for new events (until interrupted).
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only events of this kind (ConfigMap) or resource (configmaps), any case.
    #[arg(long, value_name = "KIND")]
    pub kind: Option<String>,
    /// Only events in this namespace (relist markers of all-namespaces streams included).
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only objects with this name (`*` and `?` match).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Only these types; repeatable.
    #[arg(long = "type", value_enum, value_name = "TYPE")]
    pub types: Vec<TypeArg>,
    /// pretty (one line per event) or json (the CloudEvents documents, one per line).
    #[arg(long, short = 'o', value_enum, default_value_t = TailOutput::Pretty)]
    pub output: TailOutput,
}

/// `tail --type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TypeArg {
    /// `io.kubewire.object.added`.
    Added,
    /// `io.kubewire.object.modified`.
    Modified,
    /// `io.kubewire.object.deleted`.
    Deleted,
    /// `io.kubewire.object.oversize`.
    Oversize,
    /// `io.kubewire.stream.relisted`.
    Relisted,
}

impl TypeArg {
    fn kind(self) -> Kind {
        match self {
            TypeArg::Added => Kind::Added,
            TypeArg::Modified => Kind::Modified,
            TypeArg::Deleted => Kind::Deleted,
            TypeArg::Oversize => Kind::Oversize,
            TypeArg::Relisted => Kind::Relisted,
        }
    }
}

/// `tail -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TailOutput {
    /// One line per event.
    Pretty,
    /// The CloudEvents documents.
    Json,
}

/// Whether `e` passes the filters (pure).
pub fn selected(args: &TailArgs, e: &EventView) -> bool {
    let kind = e.kind();
    if !args.types.is_empty() && !args.types.iter().any(|t| t.kind() == kind) {
        return false;
    }
    if let Some(k) = &args.kind {
        let hit = [&e.k8skind, &e.k8sresource]
            .iter()
            .any(|v| v.as_deref().is_some_and(|v| v.eq_ignore_ascii_case(k)));
        if !hit {
            return false;
        }
    }
    if let Some(ns) = &args.namespace {
        // A marker of an all-namespaces stream concerns every namespace.
        let all = kind == Kind::Relisted && e.k8snamespace.is_none();
        if !all && e.k8snamespace.as_deref() != Some(ns) {
            return false;
        }
    }
    if let Some(n) = &args.name {
        match &e.k8sname {
            Some(name) if glob_match(n, name) => {}
            _ => return false,
        }
    }
    true
}

/// Runs `tail` until the end (or, following, until interrupted).
pub async fn tail(global: &Global, args: TailArgs) -> Result<u8, CliError> {
    super::logging::init_command(global);
    let config = config_for(global, &args.source)?;
    let source = resolve(&args.source, &config.sink)?;
    let fail = |e: crate::consume::ConsumeError| CliError::Failure(e.to_string());
    let mut reader = Reader::open(&source, args.follow).await.map_err(fail)?;
    let mut pretty = Pretty::default();
    let stdout = std::io::stdout();
    loop {
        let next = tokio::select! {
            n = reader.next() => n.map_err(fail)?,
            _ = tokio::signal::ctrl_c() => None,
        };
        let record = match next {
            None => break,
            Some(Item::CaughtUp) => continue,
            Some(Item::Record(r)) => r,
        };
        let line = match &record.payload {
            None => match args.output {
                TailOutput::Json => continue,
                TailOutput::Pretty => format!(
                    "tombstone key={} ({})",
                    record.key.as_deref().unwrap_or(""),
                    record.position
                ),
            },
            Some(p) => match EventView::parse(p) {
                Err(e) => {
                    eprintln!("kubewire: {}: not a JSON document: {e}", record.position);
                    continue;
                }
                Ok(e) if !selected(&args, &e) => continue,
                Ok(e) => match args.output {
                    TailOutput::Json => String::from_utf8_lossy(p).into_owned(),
                    TailOutput::Pretty => pretty.line(&e),
                },
            },
        };
        let mut out = stdout.lock();
        // A closed pipe (`| head`) ends the listing, not with an error.
        if writeln!(out, "{line}").and_then(|_| out.flush()).is_err() {
            break;
        }
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> TailArgs {
        TailArgs {
            source: Default::default(),
            follow: false,
            kind: None,
            namespace: None,
            name: None,
            types: vec![],
            output: TailOutput::Pretty,
        }
    }

    fn ev(ty: &str, kind: &str, ns: Option<&str>, name: Option<&str>) -> EventView {
        EventView {
            ce_type: ty.into(),
            k8skind: Some(kind.into()),
            k8sresource: Some(format!("{}s", kind.to_ascii_lowercase())),
            k8snamespace: ns.map(Into::into),
            k8sname: name.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn filters_by_kind_namespace_name_and_type() {
        let cm = ev(
            "io.kubewire.object.added",
            "ConfigMap",
            Some("a"),
            Some("web-1"),
        );
        let mut a = args();
        assert!(selected(&a, &cm));
        a.kind = Some("configmap".into());
        assert!(selected(&a, &cm));
        a.kind = Some("configmaps".into());
        assert!(selected(&a, &cm));
        a.kind = Some("Secret".into());
        assert!(!selected(&a, &cm));
        let mut a = args();
        a.namespace = Some("b".into());
        assert!(!selected(&a, &cm));
        let marker = ev("io.kubewire.stream.relisted", "ConfigMap", None, None);
        assert!(
            selected(&a, &marker),
            "an all-namespaces marker concerns b too"
        );
        let mut a = args();
        a.name = Some("web-*".into());
        assert!(selected(&a, &cm));
        assert!(!selected(&a, &marker));
        let mut a = args();
        a.types = vec![TypeArg::Deleted, TypeArg::Modified];
        assert!(!selected(&a, &cm));
        a.types.push(TypeArg::Added);
        assert!(selected(&a, &cm));
    }
}
