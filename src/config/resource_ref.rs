//! The syntax of a `resources[].resource` string, before discovery resolves it.

use std::fmt;

use super::ConfigError;

/// A resource as written in the configuration, not yet resolved against the cluster.
///
/// `name` may be a plural (`deployments`), a singular (`deployment`) or a Kind
/// (`Deployment`): discovery (in `crate::cluster`) decides which, never this parser.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ResourceRef {
    /// Plural, singular or Kind, exactly as given.
    pub name: String,
    /// `None`: any group. `Some("")`: the core group (from `v1/configmaps` or `configmaps.v1`).
    pub group: Option<String>,
    /// `None`: the group's preferred version.
    pub version: Option<String>,
}

impl ResourceRef {
    /// Parses the accepted forms:
    ///
    /// | form                        | example                 | name        | group         | version |
    /// |-----------------------------|-------------------------|-------------|---------------|---------|
    /// | `name`                      | `configmaps`, `Deployment` | as given | any           | any     |
    /// | `name.group`                | `deployments.apps`      | deployments | apps          | any     |
    /// | `name.version.group`        | `Deployment.v1.apps`    | Deployment  | apps          | v1      |
    /// | `name.version` (core)       | `configmaps.v1`         | configmaps  | core (`""`)   | v1      |
    /// | `version/name` (core)       | `v1/configmaps`         | configmaps  | core (`""`)   | v1      |
    /// | `group/name`                | `apps/deployments`      | deployments | apps          | any     |
    /// | `group/version/name`        | `apps/v1/deployments`   | deployments | apps          | v1      |
    ///
    /// In the dotted form the second segment is read as a version when it looks like one
    /// (`v1`, `v2beta1`, `v1alpha3`); a group never looks like that.
    pub fn parse(input: &str) -> Result<ResourceRef, ConfigError> {
        let err = |reason: String| ConfigError::InvalidResource {
            input: input.to_owned(),
            reason,
        };
        if input.trim().is_empty() {
            return Err(err("is empty".into()));
        }
        if let Some(c) = input
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '/')))
        {
            return Err(err(format!(
                "contains {c:?}; only ASCII letters, digits, '-', '.' and '/' are allowed"
            )));
        }
        let parsed = if input.contains('/') {
            let parts: Vec<&str> = input.split('/').collect();
            if parts.iter().any(|p| p.is_empty()) {
                return Err(err("has an empty segment between slashes".into()));
            }
            match parts.as_slice() {
                [first, name] if looks_like_version(first) => ResourceRef {
                    name: (*name).to_owned(),
                    group: Some(String::new()),
                    version: Some((*first).to_owned()),
                },
                [group, name] => ResourceRef {
                    name: (*name).to_owned(),
                    group: Some((*group).to_owned()),
                    version: None,
                },
                [group, version, name] => ResourceRef {
                    name: (*name).to_owned(),
                    group: Some((*group).to_owned()),
                    version: Some((*version).to_owned()),
                },
                _ => {
                    return Err(err(
                        "has too many slashes; expected `group/version/resource`".into(),
                    ));
                }
            }
        } else {
            if input.split('.').any(str::is_empty) {
                return Err(err("has an empty segment between dots".into()));
            }
            let (name, rest) = match input.split_once('.') {
                None => (input, None),
                Some((n, r)) => (n, Some(r)),
            };
            match rest {
                None => ResourceRef {
                    name: name.to_owned(),
                    group: None,
                    version: None,
                },
                Some(rest) => match rest.split_once('.') {
                    Some((version, group)) if looks_like_version(version) => ResourceRef {
                        name: name.to_owned(),
                        group: Some(group.to_owned()),
                        version: Some(version.to_owned()),
                    },
                    None if looks_like_version(rest) => ResourceRef {
                        name: name.to_owned(),
                        group: Some(String::new()),
                        version: Some(rest.to_owned()),
                    },
                    _ => ResourceRef {
                        name: name.to_owned(),
                        group: Some(rest.to_owned()),
                        version: None,
                    },
                },
            }
        };
        parsed.check().map_err(err)?;
        Ok(parsed)
    }

    fn check(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("has no resource name".into());
        }
        if !self.name.starts_with(|c: char| c.is_ascii_alphabetic())
            || self.name.ends_with('-')
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!(
                "resource name {:?} must start with a letter and contain only letters, digits and '-'",
                self.name
            ));
        }
        if let Some(v) = &self.version
            && !is_dns_label(v)
        {
            return Err(format!(
                "version {v:?} must be lowercase letters and digits (e.g. v1, v1beta1)"
            ));
        }
        if let Some(g) = &self.group
            && !g.is_empty()
            && !is_dns_subdomain(g)
        {
            return Err(format!(
                "group {g:?} must be a DNS subdomain (lowercase letters, digits, '-' and '.')"
            ));
        }
        Ok(())
    }
}

impl fmt::Display for ResourceRef {
    /// The canonical `group/version/name` form, with `*` for what is unspecified and
    /// `core` for the core group.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = match self.group.as_deref() {
            None => "*",
            Some("") => "core",
            Some(g) => g,
        };
        write!(
            f,
            "{group}/{}/{}",
            self.version.as_deref().unwrap_or("*"),
            self.name
        )
    }
}

/// `v1`, `v2`, `v1beta1`, `v1alpha2`: the Kubernetes version pattern.
pub(crate) fn looks_like_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || rest.starts_with('0') {
        return false;
    }
    let rest = &rest[digits..];
    if rest.is_empty() {
        return true;
    }
    let tail = rest
        .strip_prefix("alpha")
        .or_else(|| rest.strip_prefix("beta"));
    matches!(tail, Some(t) if !t.is_empty() && !t.starts_with('0') && t.chars().all(|c| c.is_ascii_digit()))
}

/// RFC 1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, ≤ 63.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: dot-separated labels, ≤ 253.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(name: &str, group: Option<&str>, version: Option<&str>) -> ResourceRef {
        ResourceRef {
            name: name.into(),
            group: group.map(Into::into),
            version: version.map(Into::into),
        }
    }

    #[test]
    fn parse_accepts_every_documented_form() {
        let table = [
            ("configmaps", r("configmaps", None, None)),
            ("Deployment", r("Deployment", None, None)),
            ("deployments.apps", r("deployments", Some("apps"), None)),
            (
                "apps/v1/deployments",
                r("deployments", Some("apps"), Some("v1")),
            ),
            ("v1/configmaps", r("configmaps", Some(""), Some("v1"))),
            ("configmaps.v1", r("configmaps", Some(""), Some("v1"))),
            ("apps/deployments", r("deployments", Some("apps"), None)),
            (
                "Deployment.v1.apps",
                r("Deployment", Some("apps"), Some("v1")),
            ),
            (
                "widgets.example.com",
                r("widgets", Some("example.com"), None),
            ),
            (
                "example.com/v1/widgets",
                r("widgets", Some("example.com"), Some("v1")),
            ),
            (
                "Widget.v1.example.com",
                r("Widget", Some("example.com"), Some("v1")),
            ),
            (
                "cronjobs.v2beta1.batch",
                r("cronjobs", Some("batch"), Some("v2beta1")),
            ),
            (
                "horizontalpodautoscalers.autoscaling",
                r("horizontalpodautoscalers", Some("autoscaling"), None),
            ),
        ];
        for (input, want) in table {
            assert_eq!(ResourceRef::parse(input).unwrap(), want, "input {input:?}");
        }
    }

    #[test]
    fn parse_rejects_malformed_input_with_a_reason() {
        for bad in [
            "",
            "  ",
            "a/b/c/d",
            "apps//deployments",
            "/configmaps",
            "config maps",
            "configmaps.",
            ".apps",
            "deployments.Apps",
            "deploy_ments",
            "apps/V1/deployments",
            "9lives",
            "pods?",
            "é",
        ] {
            let e = ResourceRef::parse(bad).expect_err(bad);
            assert!(
                matches!(&e, ConfigError::InvalidResource { input, .. } if input == bad),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(
            ResourceRef::parse("v1/configmaps").unwrap().to_string(),
            "core/v1/configmaps"
        );
        assert_eq!(
            ResourceRef::parse("deployments.apps").unwrap().to_string(),
            "apps/*/deployments"
        );
    }

    #[test]
    fn version_pattern() {
        for v in ["v1", "v2", "v10", "v1beta1", "v2alpha3"] {
            assert!(looks_like_version(v), "{v}");
        }
        for v in [
            "v", "v0", "apps", "v1beta", "v1gamma1", "1", "v1beta0", "v01",
        ] {
            assert!(!looks_like_version(v), "{v}");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC*") {
            let _ = ResourceRef::parse(&s);
        }

        #[test]
        fn parse_never_panics_on_resource_like_strings(s in "[A-Za-z0-9./é -]{0,40}") {
            if let Ok(r) = ResourceRef::parse(&s) {
                prop_assert!(!r.name.is_empty());
            }
        }
    }
}
