//! `kubewire verify` (I/O around `crate::verify`): lists the configured resources in each
//! cluster (metadata only, paginated, with the resources' selectors), then reads the stream
//! once through to its end, feeding both into the [`Verifier`]; while discrepancies remain
//! it goes on reading for up to `--settle` seconds (a stream still being written catches
//! up), then reports.

use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use kube::api::{Api, DynamicObject, ListParams};

use super::source::{SourceArgs, config_for, resolve};
use super::{CliError, EXIT_FAILURE, EXIT_OK, Global};
use crate::cluster::api_resource;
use crate::config::{Config, ResourceConfig};
use crate::consume::reader::Reader;
use crate::consume::{EventView, Item, Source};
use crate::event::{ChangeType, ResourceInfo};
use crate::verify::{Checks, Report, Scope, Verifier, render_text};

/// Objects per page of the cluster lists.
const PAGE: u32 = 500;

/// `kubewire verify`'s flags.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Where the stream is (default: the configuration's sink).
    #[command(flatten)]
    pub source: SourceArgs,
    /// Only this configured resource (as written in `resources[].resource`, or its
    /// resolved name such as deployments.apps); repeatable. Default: every one.
    #[arg(long, value_name = "RESOURCE")]
    pub resource: Vec<String>,
    /// Only this configured cluster; repeatable. Default: every one.
    #[arg(long, value_name = "NAME")]
    pub cluster: Vec<String>,
    /// Output: a summary (text) or the whole report (json).
    #[arg(long, short = 'o', value_enum, default_value_t = VerifyOutput::Text)]
    pub output: VerifyOutput,
    /// After reading to the end, keep reading for up to this many seconds while
    /// discrepancies remain (a stream still being written catches up). 0: report at once.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub settle: u64,
    /// Objects named per kind of finding in the text summary.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub limit: usize,
}

/// `verify -o`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum VerifyOutput {
    /// The summary.
    Text,
    /// The report as JSON.
    Json,
}

/// Runs `verify`: exit 0 clean, 1 discrepancies or a failure to read, 2 usage.
pub async fn verify(global: &Global, args: VerifyArgs) -> Result<u8, CliError> {
    super::logging::init_command(global);
    let config = config_for(global, &args.source)?;
    let source = resolve(&args.source, &config.sink)?;
    let mut verifier = Verifier::new();
    list_clusters(&config, &args, &mut verifier).await?;
    let report = read(&source, &mut verifier, Duration::from_secs(args.settle)).await?;
    match args.output {
        VerifyOutput::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("the report serializes")
        ),
        VerifyOutput::Text => print!("{}", render_text(&report, args.limit)),
    }
    Ok(if report.is_clean() {
        EXIT_OK
    } else {
        EXIT_FAILURE
    })
}

/// What can be checked of a resource, by what it publishes.
pub fn checks(rc: &ResourceConfig) -> Checks {
    Checks {
        missing: rc.initial,
        stale: rc.events.contains(&ChangeType::Modified),
        ghosts: rc.events.contains(&ChangeType::Deleted),
    }
}

async fn list_clusters(
    config: &Config,
    args: &VerifyArgs,
    verifier: &mut Verifier,
) -> Result<(), CliError> {
    let clusters: Vec<_> = config
        .clusters()
        .into_iter()
        .filter(|c| args.cluster.is_empty() || args.cluster.contains(&c.name))
        .collect();
    if clusters.is_empty() {
        return Err(CliError::Usage(format!(
            "--cluster {:?}: not a configured cluster",
            args.cluster
        )));
    }
    if config.resources.is_empty() {
        return Err(CliError::Usage(
            "no resources to verify: the configuration lists none".into(),
        ));
    }
    let mut matched = vec![false; args.resource.len()];
    for cluster in &clusters {
        let (client, catalog) = super::check::discover(cluster).await.map_err(|e| {
            CliError::Failure(format!("cluster {:?} cannot be reached: {e}", cluster.name))
        })?;
        for rc in &config.resources {
            let infos: Vec<ResourceInfo> = if rc.is_all() {
                catalog.all_watchable(&rc.excludes())
            } else {
                vec![catalog.resolve_configured(&rc.resource).map_err(|e| {
                    CliError::Failure(format!(
                        "cluster {:?}: resource {:?}: {e}",
                        cluster.name, rc.resource
                    ))
                })?]
            };
            for info in infos {
                let wanted = args.resource.is_empty()
                    || args.resource.iter().enumerate().any(|(i, r)| {
                        let hit =
                            r == &rc.resource || r == &info.qualified_name() || r == &info.resource;
                        if hit {
                            matched[i] = true;
                        }
                        hit
                    });
                if !wanted {
                    continue;
                }
                for ns in rc.scopes(info.namespaced) {
                    list_scope(&client, &cluster.name, &info, ns.as_deref(), rc, verifier).await?;
                }
            }
        }
    }
    if let Some(i) = matched.iter().position(|m| !m) {
        return Err(CliError::Usage(format!(
            "--resource {:?} is not one of the configured resources",
            args.resource[i]
        )));
    }
    Ok(())
}

async fn list_scope(
    client: &kube::Client,
    cluster: &str,
    info: &ResourceInfo,
    namespace: Option<&str>,
    rc: &ResourceConfig,
    verifier: &mut Verifier,
) -> Result<(), CliError> {
    let ar = api_resource(info);
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let mut lp = ListParams::default().limit(PAGE);
    if let Some(l) = &rc.label_selector {
        lp = lp.labels(l);
    }
    if let Some(f) = &rc.field_selector {
        lp = lp.fields(f);
    }
    let what = format!(
        "cluster {cluster:?}: cannot list {} in {}",
        info.qualified_name(),
        namespace.unwrap_or("all namespaces")
    );
    let mut scope = None;
    loop {
        let page = api
            .list_metadata(&lp)
            .await
            .map_err(|e| CliError::Failure(format!("{what}: {e}")))?;
        // The first page's version is the snapshot's: the continued pages are of it.
        let s = match scope {
            Some(s) => s,
            None => {
                let s = verifier
                    .add_scope(Scope {
                        cluster: cluster.to_owned(),
                        group: crate::envelope::group_name(info).to_owned(),
                        resource: info.resource.clone(),
                        namespace: namespace.map(str::to_owned),
                        list_version: page.metadata.resource_version.clone().unwrap_or_default(),
                        checks: checks(rc),
                    })
                    .map_err(|e| CliError::Usage(e.to_string()))?;
                scope = Some(s);
                s
            }
        };
        for o in &page.items {
            let m = &o.metadata;
            verifier.listed(
                s,
                m.namespace.as_deref(),
                m.name.as_deref().unwrap_or_default(),
                m.uid.as_deref().unwrap_or_default(),
                m.resource_version.as_deref().unwrap_or_default(),
            );
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(c) => lp.continue_token = Some(c),
            None => return Ok(()),
        }
    }
}

/// Reads `source` to its end into `verifier`; then, while the report has discrepancies,
/// on for up to `settle`. Returns the last report.
pub async fn read(
    source: &Source,
    verifier: &mut Verifier,
    settle: Duration,
) -> Result<Report, CliError> {
    let name = source.to_string();
    let fail = |e: crate::consume::ConsumeError| CliError::Failure(e.to_string());
    let mut reader = Reader::open(source, !settle.is_zero())
        .await
        .map_err(fail)?;
    loop {
        match reader.next().await.map_err(fail)? {
            None | Some(Item::CaughtUp) => break,
            Some(Item::Record(r)) => feed(verifier, &r),
        }
    }
    let mut report = verifier.report(&name);
    let deadline = Instant::now() + settle;
    while !report.is_clean() && Instant::now() < deadline {
        // Read what arrives for a second, then look again.
        let until = (Instant::now() + Duration::from_secs(1)).min(deadline);
        while let Ok(next) = tokio::time::timeout_at(until.into(), reader.next()).await {
            match next.map_err(fail)? {
                Some(Item::Record(r)) => feed(verifier, &r),
                Some(Item::CaughtUp) => {}
                None => break,
            }
        }
        report = verifier.report(&name);
    }
    Ok(report)
}

fn feed(verifier: &mut Verifier, r: &crate::consume::Record) {
    match &r.payload {
        None => verifier.tombstone(),
        Some(p) => match EventView::parse(p) {
            Ok(e) => verifier.observe(&e),
            Err(_) => verifier.unparsable(),
        },
    }
}
