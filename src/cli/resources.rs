//! `kubewire resources`: what each cluster serves that can be listed and watched, as a
//! table, a wide table or JSON.

use serde::Serialize;

use super::{CliError, EXIT_FAILURE, EXIT_OK, Global, ResourcesOutput};
use crate::cluster::CatalogEntry;
use crate::config::Config;

/// One row of the listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// The configured cluster's name.
    pub cluster: String,
    /// `plural.group` (the plural for the core group): what `resources[].resource` takes.
    pub name: String,
    /// Group, empty for the core group.
    pub group: String,
    /// Version.
    pub version: String,
    /// `group/version`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Whether it lives in namespaces.
    pub namespaced: bool,
    /// Served at the group's preferred version.
    pub preferred: bool,
    /// The verbs it serves.
    pub verbs: Vec<String>,
}

impl Row {
    /// A row of `cluster`'s catalog.
    pub fn of(cluster: &str, e: &CatalogEntry) -> Self {
        Self {
            cluster: cluster.to_owned(),
            name: e.info.qualified_name(),
            group: e.info.group.clone(),
            version: e.info.version.clone(),
            api_version: e.info.api_version(),
            kind: e.info.kind.clone(),
            namespaced: e.info.namespaced,
            preferred: e.preferred,
            verbs: e.verbs.clone(),
        }
    }
}

/// Renders the rows (pure). The CLUSTER column appears with more than one cluster.
pub fn render(rows: &[Row], output: ResourcesOutput, several: bool) -> String {
    use std::fmt::Write as _;
    if output == ResourcesOutput::Json {
        return serde_json::to_string_pretty(rows).expect("rows serialize") + "\n";
    }
    let wide = output == ResourcesOutput::Wide;
    let mut out = String::new();
    let mut line = |cols: [&str; 8]| {
        let mut l = String::new();
        if several {
            let _ = write!(l, "{:<16} ", cols[0]);
        }
        let _ = write!(
            l,
            "{:<48} {:<36} {:<32} {:<10}",
            cols[1], cols[2], cols[3], cols[4]
        );
        if wide {
            let _ = write!(l, " {:<9} {}", cols[5], cols[6]);
            let _ = write!(l, " {}", cols[7]);
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line([
        "CLUSTER",
        "NAME",
        "APIVERSION",
        "KIND",
        "NAMESPACED",
        "PREFERRED",
        "VERBS",
        "",
    ]);
    for r in rows {
        let namespaced = r.namespaced.to_string();
        let preferred = r.preferred.to_string();
        let verbs = r.verbs.join(",");
        line([
            &r.cluster,
            &r.name,
            &r.api_version,
            &r.kind,
            &namespaced,
            &preferred,
            &verbs,
            "",
        ]);
    }
    out
}

/// Runs `resources`.
pub async fn resources(
    global: &Global,
    output: ResourcesOutput,
    only: Option<&str>,
) -> Result<u8, CliError> {
    super::logging::init_command(global);
    let config = match super::load_unvalidated(global) {
        Ok(l) => l.config,
        // No file at the default paths: the cluster of KUBECONFIG / --kubeconfig.
        Err(_) if !explicit(global) && !default_path_exists() => {
            let mut c = Config::default();
            super::apply_cluster_flags(&mut c, global);
            c
        }
        Err(e) => return Err(e),
    };
    let clusters: Vec<_> = config
        .clusters()
        .into_iter()
        .filter(|c| only.is_none_or(|o| o == c.name))
        .collect();
    if clusters.is_empty() {
        return Err(CliError::Usage(format!(
            "--cluster {:?} is not one of the configured clusters",
            only.unwrap_or_default()
        )));
    }
    let several = clusters.len() > 1;
    let mut rows = Vec::new();
    let mut failed = false;
    for c in &clusters {
        match super::check::discover(c).await {
            Ok((_, catalog)) => rows.extend(
                catalog
                    .entries()
                    .iter()
                    .filter(|e| (e.preferred || output == ResourcesOutput::Wide) && e.watchable())
                    .map(|e| Row::of(&c.name, e)),
            ),
            Err(e) => {
                eprintln!("kubewire: cluster {:?} cannot be reached: {e}", c.name);
                failed = true;
            }
        }
    }
    print!("{}", render(&rows, output, several));
    Ok(if failed { EXIT_FAILURE } else { EXIT_OK })
}

fn explicit(global: &Global) -> bool {
    global.config.is_some() || std::env::var("KUBEWIRE_CONFIG").is_ok_and(|v| !v.trim().is_empty())
}

fn default_path_exists() -> bool {
    let (path, _) = super::paths::resolve_config_path(None, None, &|p| p.exists());
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(cluster: &str, name: &str, kind: &str) -> Row {
        Row {
            cluster: cluster.into(),
            name: name.into(),
            group: "apps".into(),
            version: "v1".into(),
            api_version: "apps/v1".into(),
            kind: kind.into(),
            namespaced: true,
            preferred: true,
            verbs: vec!["list".into(), "watch".into()],
        }
    }

    #[test]
    fn table_wide_and_json_show_the_same_rows() {
        let rows = [row("a", "deployments.apps", "Deployment")];
        let table = render(&rows, ResourcesOutput::Table, false);
        let mut lines = table.lines();
        let head: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(head, ["NAME", "APIVERSION", "KIND", "NAMESPACED"]);
        let row1: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(row1, ["deployments.apps", "apps/v1", "Deployment", "true"]);
        let wide = render(&rows, ResourcesOutput::Wide, true);
        let head: Vec<&str> = wide.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(
            head,
            [
                "CLUSTER",
                "NAME",
                "APIVERSION",
                "KIND",
                "NAMESPACED",
                "PREFERRED",
                "VERBS"
            ]
        );
        assert!(wide.contains("list,watch"), "{wide}");
        let json: serde_json::Value =
            serde_json::from_str(&render(&rows, ResourcesOutput::Json, false)).unwrap();
        assert_eq!(json[0]["apiVersion"], "apps/v1");
        assert_eq!(json[0]["verbs"][1], "watch");
    }
}
