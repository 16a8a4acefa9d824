//! `kubewire check-config`: every problem of a configuration that can be found without
//! running it — syntax and values, and unless offline the secrets and files it names, its
//! `${NAME}`s and the resources against each cluster. A cluster that cannot be reached is not a
//! problem of the configuration: exit 1 naming it, not 2.

use super::{CliError, EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Global};
use crate::cluster::{self, Catalog, ClusterError};
use crate::config::{ClusterConfig, Config, Problem, ResourceRef};

/// Runs `check-config`.
pub async fn check_config(global: &Global, offline: bool) -> Result<u8, CliError> {
    super::logging::init_command(global);
    let loaded = super::load_unvalidated(global)?;
    let config = &loaded.config;
    let mut problems = config.validate();
    let mut unreachable = Vec::new();
    if !offline {
        problems.extend(config.check_references(&|name| std::env::var(name).ok()));
        let (p, u) = resolve_against_clusters(config).await;
        problems.extend(p);
        unreachable = u;
    }
    for p in &problems {
        eprintln!("{p}");
    }
    for u in &unreachable {
        eprintln!("{u}");
    }
    if !problems.is_empty() {
        return Ok(EXIT_USAGE);
    }
    if !unreachable.is_empty() {
        return Ok(EXIT_FAILURE);
    }
    println!("{}: valid", loaded.path.display());
    Ok(EXIT_OK)
}

/// Every configured resource must resolve, through discovery, in every cluster: the
/// problems, and the clusters that could not be asked (each named, with why).
async fn resolve_against_clusters(config: &Config) -> (Vec<Problem>, Vec<String>) {
    let mut problems = Vec::new();
    let mut unreachable = Vec::new();
    for cluster in config.clusters() {
        let catalog = match discover(&cluster).await {
            Ok((_, c)) => c,
            Err(e) => {
                unreachable.push(format!("cluster {:?} cannot be reached: {e}", cluster.name));
                continue;
            }
        };
        for (ri, rc) in config.resources.iter().enumerate() {
            // Syntax errors were reported by validate(); "*" resolves to whatever is served.
            if rc.is_all() {
                continue;
            }
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
    (problems, unreachable)
}

/// A client of `cluster` and what it serves.
pub async fn discover(cluster: &ClusterConfig) -> Result<(kube::Client, Catalog), ClusterError> {
    let client = cluster::connect(cluster).await?;
    let catalog = Catalog::discover(&cluster.name, &client).await?;
    Ok((client, catalog))
}
