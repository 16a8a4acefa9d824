//! The cluster stage: one `kube::Client` per configured cluster, and the resolution of the
//! configured resource names through discovery (never by guessing plurals).

pub mod leader;
pub mod ratelimit;
pub mod throttle;

use std::fmt;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{ApiCapabilities, ApiResource, Discovery, Scope, verbs};

use crate::config::{ClusterConfig, ResourceRef};
use crate::event::ResourceInfo;

/// Errors of this stage: a cluster that cannot be reached or configured, or a configured
/// resource name that does not resolve to exactly one watchable resource.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The cluster's kubeconfig (or the configured context in it) cannot be read or used.
    #[error("cluster {cluster:?}: cannot read kubeconfig: {source}")]
    Kubeconfig {
        /// The configured cluster name.
        cluster: String,
        /// kube's error.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig given and neither KUBECONFIG, ~/.kube/config nor the in-cluster
    /// environment yields a configuration.
    #[error(
        "cluster {cluster:?}: no usable configuration (KUBECONFIG, ~/.kube/config or in-cluster): {source}"
    )]
    Infer {
        /// The configured cluster name.
        cluster: String,
        /// kube's error.
        #[source]
        source: kube::config::InferConfigError,
    },
    /// The configuration is found but no client can be built from it (e.g. bad TLS data).
    #[error("cluster {cluster:?}: cannot build a client: {source}")]
    Client {
        /// The configured cluster name.
        cluster: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// Neither aggregated discovery nor the per-group walk succeeded.
    #[error("cluster {cluster:?}: discovery failed: {source}")]
    Discovery {
        /// The configured cluster name.
        cluster: String,
        /// The per-group walk's error.
        #[source]
        source: kube::Error,
    },
    /// No served resource matches the configured name (at the preferred version unless a
    /// version is given).
    #[error("unknown resource {name:?}{}", did_you_mean(.suggestion))]
    Unknown {
        /// The name as configured.
        name: String,
        /// The closest watchable resource name (edit distance ≤ 3); `None`: nothing close.
        suggestion: Option<String>,
    },
    /// The name matches several resources, none of them in the core group (which would win).
    #[error("resource {name:?} is ambiguous: it matches {}; qualify it with its group", .candidates.join(", "))]
    Ambiguous {
        /// The name as configured.
        name: String,
        /// The matching resources, as `resource.group (apiVersion)`.
        candidates: Vec<String>,
    },
    /// The name resolves, but the resource lacks the `list` or the `watch` verb.
    #[error("resource {name:?} ({resolved}) cannot be listed and watched (verbs: {verbs})")]
    NotWatchable {
        /// The name as configured.
        name: String,
        /// What it resolved to, as `resource.group (apiVersion)`.
        resolved: String,
        /// The verbs the resource does serve, comma-separated.
        verbs: String,
    },
}

fn did_you_mean(s: &Option<String>) -> String {
    match s {
        Some(s) => format!(" (did you mean {s}?)"),
        None => String::new(),
    }
}

/// Whether this identity may both list and watch `info` in `namespace` (`None`: every
/// namespace, or a cluster-scoped resource), asked of the API server
/// (SelfSubjectAccessReview, one per verb).
pub async fn may_list_and_watch(
    client: &kube::Client,
    info: &ResourceInfo,
    namespace: Option<&str>,
) -> Result<bool, kube::Error> {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    let api: kube::Api<SelfSubjectAccessReview> = kube::Api::all(client.clone());
    for verb in [verbs::LIST, verbs::WATCH] {
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(info.group.clone()),
                    resource: Some(info.resource.clone()),
                    namespace: namespace.map(str::to_owned),
                    verb: Some(verb.to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = api.create(&Default::default(), &review).await?;
        if !answer.status.is_some_and(|s| s.allowed) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Builds the client for one configured cluster: its kubeconfig (and context) when given,
/// else the usual inference (KUBECONFIG / ~/.kube/config, then in-cluster).
pub async fn connect(cfg: &ClusterConfig) -> Result<kube::Client, ClusterError> {
    connect_with(cfg, None).await
}

/// [`connect`], counting each throttled (429) attempt with `on_throttled`.
pub async fn connect_with(
    cfg: &ClusterConfig,
    on_throttled: Option<throttle::OnThrottled>,
) -> Result<kube::Client, ClusterError> {
    let options = KubeConfigOptions {
        context: cfg.context.clone(),
        ..Default::default()
    };
    let config = match &cfg.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| ClusterError::Kubeconfig {
                cluster: cfg.name.clone(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|source| ClusterError::Kubeconfig {
                    cluster: cfg.name.clone(),
                    source,
                })?
        }
        None if cfg.context.is_some() => {
            kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|source| ClusterError::Kubeconfig {
                    cluster: cfg.name.clone(),
                    source,
                })?
        }
        None => kube::Config::infer()
            .await
            .map_err(|source| ClusterError::Infer {
                cluster: cfg.name.clone(),
                source,
            })?,
    };
    // Our own retry (throttle.rs) instead of kube's, so that each 429 is seen and counted.
    let mut config = config;
    config.default_retry = false;
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|source| ClusterError::Client {
            cluster: cfg.name.clone(),
            source,
        })?
        .with_layer(&throttle::ThrottleLayer::new(&cfg.name, on_throttled));
    Ok(match ratelimit::RateLimitLayer::new(cfg.qps, cfg.burst) {
        Some(limit) => builder.with_layer(&limit).build(),
        None => builder.build(),
    })
}

/// One resource the cluster serves, as discovery reported it.
#[derive(Clone, Debug)]
pub struct CatalogEntry {
    /// The resource, at this version.
    pub info: ResourceInfo,
    /// The verbs it serves (`list`, `watch`, `get`, ...).
    pub verbs: Vec<String>,
    /// Served at its group's preferred version.
    pub preferred: bool,
}

impl CatalogEntry {
    /// Whether it serves both `list` and `watch` (what a stream needs).
    pub fn watchable(&self) -> bool {
        self.verbs.iter().any(|v| v == verbs::LIST) && self.verbs.iter().any(|v| v == verbs::WATCH)
    }
}

impl fmt::Display for CatalogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            self.info.qualified_name(),
            self.info.api_version()
        )
    }
}

/// Everything a cluster serves, every version of every group: what names resolve against.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
}

impl Catalog {
    /// Reads everything `client`'s cluster serves: aggregated discovery, else a walk of the
    /// groups.
    pub async fn discover(cluster: &str, client: &kube::Client) -> Result<Self, ClusterError> {
        // Aggregated discovery is one request for all groups: a group that appears or
        // disappears meanwhile (a CRD being created or deleted) cannot fail it half-way, as
        // it fails the per-group walk with a 404. Servers without it get the walk.
        let discovery = match Discovery::new(client.clone()).run_aggregated().await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(%cluster, error = %e, "aggregated discovery unavailable; walking the groups");
                Discovery::new(client.clone())
                    .run()
                    .await
                    .map_err(|source| ClusterError::Discovery {
                        cluster: cluster.to_owned(),
                        source,
                    })?
            }
        };
        let mut entries = Vec::new();
        for group in discovery.groups() {
            let preferred = group.preferred_version_or_latest().to_owned();
            for version in group.versions() {
                for (ar, caps) in group.versioned_resources(version) {
                    entries.push(entry(ar, caps, version == preferred));
                }
            }
        }
        Ok(Self::from_entries(entries))
    }

    /// A catalog of the given entries (sorted by group, resource, version).
    pub fn from_entries(mut entries: Vec<CatalogEntry>) -> Self {
        entries.sort_by(|a, b| {
            (&a.info.group, &a.info.resource, &a.info.version).cmp(&(
                &b.info.group,
                &b.info.resource,
                &b.info.version,
            ))
        });
        Self { entries }
    }

    /// Every entry, sorted by group, resource, version.
    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    /// Every resource `resource: "*"` stands for: listable and watchable, at its group's
    /// preferred version, one per (group, resource), minus what `exclude` names (a plural, a
    /// qualified `plural.group`, or a group).
    pub fn all_watchable(&self, exclude: &[String]) -> Vec<ResourceInfo> {
        let excluded = |i: &ResourceInfo| {
            exclude.iter().any(|x| {
                *x == i.resource
                    || *x == i.qualified_name()
                    || (!i.group.is_empty() && *x == i.group)
            })
        };
        let mut seen = std::collections::HashSet::new();
        self.entries
            .iter()
            .filter(|e| e.preferred && e.watchable() && !excluded(&e.info))
            .filter(|e| seen.insert((e.info.group.clone(), e.info.resource.clone())))
            .map(|e| e.info.clone())
            .collect()
    }

    /// Resolves a `resources[].resource` string as configured: parsed, then
    /// [`Catalog::resolve`]d; `Err` is the message that names what is wrong.
    pub fn resolve_configured(&self, text: &str) -> Result<ResourceInfo, String> {
        let r = ResourceRef::parse(text).map_err(|e| e.to_string())?;
        self.resolve(&r).map_err(|e| e.to_string())
    }

    /// Resolves a configured name (plural, kind or singular, optionally with group and
    /// version) to exactly one listable and watchable resource.
    pub fn resolve(&self, r: &ResourceRef) -> Result<ResourceInfo, ClusterError> {
        let given = display_ref(r);
        let name = r.name.to_ascii_lowercase();
        let matches_name =
            |e: &&CatalogEntry| e.info.resource == name || e.info.kind.to_ascii_lowercase() == name;
        let mut found: Vec<&CatalogEntry> = self
            .entries
            .iter()
            .filter(matches_name)
            .filter(|e| r.group.as_ref().is_none_or(|g| &e.info.group == g))
            .filter(|e| match &r.version {
                Some(v) => &e.info.version == v,
                None => e.preferred,
            })
            .collect();
        if found.is_empty() {
            return Err(ClusterError::Unknown {
                suggestion: self.suggest(&given),
                name: given,
            });
        }
        // The core group wins an unqualified name, as kubectl does (`events`).
        if r.group.is_none() && found.len() > 1 && found.iter().any(|e| e.info.group.is_empty()) {
            found.retain(|e| e.info.group.is_empty());
        }
        if found.len() > 1 {
            return Err(ClusterError::Ambiguous {
                name: given,
                candidates: found.iter().map(|e| e.to_string()).collect(),
            });
        }
        let e = found[0];
        if !e.watchable() {
            return Err(ClusterError::NotWatchable {
                name: given,
                resolved: e.to_string(),
                verbs: e.verbs.join(","),
            });
        }
        Ok(e.info.clone())
    }

    fn suggest(&self, given: &str) -> Option<String> {
        let given = given.to_ascii_lowercase();
        self.entries
            .iter()
            .filter(|e| e.preferred && e.watchable())
            .flat_map(|e| {
                let q = e.info.qualified_name();
                [
                    (strsim::levenshtein(&given, &q), q.clone()),
                    (strsim::levenshtein(&given, &e.info.resource), q),
                ]
            })
            .filter(|(d, _)| *d <= 3)
            .min()
            .map(|(_, q)| q)
    }
}

fn entry(ar: ApiResource, caps: ApiCapabilities, preferred: bool) -> CatalogEntry {
    CatalogEntry {
        info: ResourceInfo {
            group: ar.group,
            version: ar.version,
            resource: ar.plural,
            kind: ar.kind,
            namespaced: caps.scope == Scope::Namespaced,
        },
        verbs: caps.operations,
        preferred,
    }
}

fn display_ref(r: &ResourceRef) -> String {
    let mut s = r.name.clone();
    if let Some(v) = &r.version {
        s = format!("{v}/{s}");
    }
    if let Some(g) = r.group.as_ref().filter(|g| !g.is_empty()) {
        if r.version.is_some() {
            s = format!("{g}/{s}");
        } else {
            s = format!("{s}.{g}");
        }
    }
    s
}

/// The `ApiResource` kube's request builders want.
pub fn api_resource(info: &ResourceInfo) -> ApiResource {
    ApiResource {
        group: info.group.clone(),
        version: info.version.clone(),
        api_version: info.api_version(),
        kind: info.kind.clone(),
        plural: info.resource.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(group: &str, version: &str, resource: &str, kind: &str, preferred: bool) -> CatalogEntry {
        CatalogEntry {
            info: ResourceInfo {
                group: group.into(),
                version: version.into(),
                resource: resource.into(),
                kind: kind.into(),
                namespaced: true,
            },
            verbs: vec!["list".into(), "watch".into(), "get".into()],
            preferred,
        }
    }

    fn catalog() -> Catalog {
        let mut tokenreviews = e(
            "authentication.k8s.io",
            "v1",
            "tokenreviews",
            "TokenReview",
            true,
        );
        tokenreviews.verbs = vec!["create".into()];
        Catalog::from_entries(vec![
            e("", "v1", "configmaps", "ConfigMap", true),
            e("", "v1", "events", "Event", true),
            e("events.k8s.io", "v1", "events", "Event", true),
            e("apps", "v1", "deployments", "Deployment", true),
            e("example.com", "v1", "widgets", "Widget", true),
            e("example.com", "v1beta1", "widgets", "Widget", false),
            tokenreviews,
        ])
    }

    fn r(name: &str, group: Option<&str>, version: Option<&str>) -> ResourceRef {
        ResourceRef {
            name: name.into(),
            group: group.map(Into::into),
            version: version.map(Into::into),
        }
    }

    #[test]
    fn all_watchable_is_every_preferred_listable_resource_minus_the_excludes() {
        let names = |ex: &[&str]| {
            let ex: Vec<String> = ex.iter().map(|s| (*s).to_owned()).collect();
            catalog()
                .all_watchable(&ex)
                .iter()
                .map(|i| i.qualified_name())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(&[]),
            [
                "configmaps",
                "events",
                "deployments.apps",
                "events.events.k8s.io",
                "widgets.example.com"
            ]
        );
        // A plural (both groups), a qualified name, a group.
        assert_eq!(
            names(&["events", "deployments.apps"]),
            ["configmaps", "widgets.example.com"]
        );
        assert_eq!(names(&["example.com"]).len(), 4);
        let defaults: Vec<&str> = crate::config::DEFAULT_EXCLUDES.to_vec();
        assert_eq!(
            names(&defaults),
            ["configmaps", "deployments.apps", "widgets.example.com"]
        );
    }

    #[test]
    fn resolves_plural_kind_and_singular_forms() {
        let c = catalog();
        for rr in [
            r("configmaps", None, None),
            r("ConfigMap", None, None),
            r("configmap", None, None),
            r("configmaps", Some(""), Some("v1")),
        ] {
            assert_eq!(c.resolve(&rr).unwrap().resource, "configmaps", "{rr:?}");
        }
        let d = c
            .resolve(&r("Deployment", Some("apps"), Some("v1")))
            .unwrap();
        assert_eq!((d.group.as_str(), d.kind.as_str()), ("apps", "Deployment"));
    }

    #[test]
    fn unqualified_name_prefers_preferred_version_and_core_group() {
        let c = catalog();
        assert_eq!(c.resolve(&r("widgets", None, None)).unwrap().version, "v1");
        assert_eq!(
            c.resolve(&r("widgets", Some("example.com"), Some("v1beta1")))
                .unwrap()
                .version,
            "v1beta1"
        );
        assert_eq!(c.resolve(&r("events", None, None)).unwrap().group, "");
        assert_eq!(
            c.resolve(&r("events", Some("events.k8s.io"), None))
                .unwrap()
                .group,
            "events.k8s.io"
        );
    }

    #[test]
    fn unknown_resource_suggests_the_closest_name() {
        let err = catalog().resolve(&r("deploymnts", None, None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown resource "deploymnts" (did you mean deployments.apps?)"#
        );
        let err = catalog().resolve(&r("zzzzzzzzzz", None, None)).unwrap_err();
        assert_eq!(err.to_string(), r#"unknown resource "zzzzzzzzzz""#);
    }

    #[test]
    fn resource_without_list_and_watch_is_refused() {
        let err = catalog()
            .resolve(&r("tokenreviews", None, None))
            .unwrap_err();
        assert!(matches!(err, ClusterError::NotWatchable { .. }), "{err}");
    }
}
