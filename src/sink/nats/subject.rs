//! NATS subjects from a template such as `kubewire.{cluster}.{group}.{kind}.{namespace}.{name}`,
//! and the reversible escaping that makes any Kubernetes value a valid subject token.
//!
//! # Escaping (documented in `docs/sinks.md`)
//!
//! A NATS token may not be empty and may not contain `.`, `*`, `>` or whitespace. Each value
//! substituted for a placeholder is written as:
//!
//! - ASCII letters, digits and `-` as themselves;
//! - every other byte of its UTF-8 encoding (`.`, `_`, `%`, `:`, `*`, `>`, spaces, non-ASCII)
//!   as `%XX`, two upper-case hex digits (percent-encoding);
//! - the empty or absent value as `_` (a lone `_` never comes from a value, since `_` itself
//!   is escaped): the namespace of a cluster-scoped object, and the name of a relist marker.
//!
//! The core API group is `core` (as in the CloudEvents `k8sgroup`). So `kube-root-ca.crt` in
//! `networking.k8s.io` becomes the tokens `kube-root-ca%2Ecrt` and `networking%2Ek8s%2Eio`;
//! [`unescape`] (or any URL-decoder, after mapping `_` to empty) gives the values back.

use std::fmt::Write as _;

use crate::envelope::Attrs;

/// The token of an empty or absent value.
pub const EMPTY: &str = "_";

/// Escapes one value into one valid NATS subject token (see the module doc).
pub fn escape(value: &str) -> String {
    if value.is_empty() {
        return EMPTY.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The value a token produced by [`escape`] stands for.
pub fn unescape(token: &str) -> Result<String, String> {
    if token == EMPTY {
        return Ok(String::new());
    }
    if token.is_empty() {
        return Err("empty token".into());
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = token
                    .get(i + 1..i + 3)
                    .ok_or_else(|| format!("truncated escape in {token:?}"))?;
                let b = u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("bad escape %{hex} in {token:?}"))?;
                out.push(b);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' => {
                out.push(b);
                i += 1;
            }
            b => return Err(format!("unexpected {:?} in {token:?}", b as char)),
        }
    }
    String::from_utf8(out).map_err(|_| format!("{token:?} is not UTF-8"))
}

/// Whether `token` may be one token of a published NATS subject (no wildcards).
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty()
        && !token
            .chars()
            .any(|c| c == '.' || c == '*' || c == '>' || c.is_whitespace() || c.is_control())
}

/// A placeholder of the template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Var {
    Cluster,
    Group,
    Version,
    Kind,
    Resource,
    Namespace,
    Name,
}

impl Var {
    const ALL: [(&'static str, Var); 7] = [
        ("cluster", Var::Cluster),
        ("group", Var::Group),
        ("version", Var::Version),
        ("kind", Var::Kind),
        ("resource", Var::Resource),
        ("namespace", Var::Namespace),
        ("name", Var::Name),
    ];

    fn value(self, a: &Attrs) -> &str {
        match self {
            Var::Cluster => &a.cluster,
            Var::Group => &a.group,
            Var::Version => &a.version,
            Var::Kind => &a.kind,
            Var::Resource => &a.resource,
            Var::Namespace => a.namespace.as_deref().unwrap_or(""),
            Var::Name => a.name.as_deref().unwrap_or(""),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Var),
}

/// A parsed subject template: tokens, each a sequence of literals and placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    tokens: Vec<Vec<Part>>,
}

impl Template {
    /// Parses and checks a template; `Err` says what is wrong.
    pub fn parse(template: &str) -> Result<Template, String> {
        if template.is_empty() {
            return Err("must not be empty".into());
        }
        let mut tokens = Vec::new();
        let mut has = Vec::new();
        for (i, raw) in template.split('.').enumerate() {
            if raw.is_empty() {
                return Err(format!(
                    "token {} is empty (leading, trailing or doubled '.')",
                    i + 1
                ));
            }
            let mut parts = Vec::new();
            let mut rest = raw;
            while !rest.is_empty() {
                if let Some(after) = rest.strip_prefix('{') {
                    let (name, tail) = after
                        .split_once('}')
                        .ok_or_else(|| format!("unclosed '{{' in {raw:?}"))?;
                    let var = Var::ALL
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, v)| *v)
                        .ok_or_else(|| {
                            format!(
                                "unknown placeholder {{{name}}} (known: {})",
                                Var::ALL
                                    .iter()
                                    .map(|(n, _)| format!("{{{n}}}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        })?;
                    has.push(var);
                    parts.push(Part::Var(var));
                    rest = tail;
                } else {
                    let end = rest.find('{').unwrap_or(rest.len());
                    let lit = &rest[..end];
                    if lit.contains('}') || !is_valid_token(lit) {
                        return Err(format!(
                            "{lit:?} is not allowed in a subject (no '*', '>', '}}' or whitespace)"
                        ));
                    }
                    parts.push(Part::Literal(lit.to_owned()));
                    rest = &rest[end..];
                }
            }
            tokens.push(parts);
        }
        for needed in [Var::Namespace, Var::Name] {
            if !has.contains(&needed) {
                return Err(
                    "must contain {namespace} and {name}: one object, one subject (per-object order)"
                        .into(),
                );
            }
        }
        Ok(Template {
            source: template.to_owned(),
            tokens,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The subject of an event.
    pub fn render(&self, attrs: &Attrs) -> String {
        let mut out = String::with_capacity(64);
        for (i, token) in self.tokens.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            for part in token {
                match part {
                    Part::Literal(l) => out.push_str(l),
                    Part::Var(v) => out.push_str(&escape(v.value(attrs))),
                }
            }
        }
        out
    }

    /// The template with every token holding a placeholder replaced by `*`: the subject
    /// filter matching every subject it renders.
    pub fn wildcard(&self) -> String {
        self.tokens
            .iter()
            .map(|t| match t.as_slice() {
                [Part::Literal(l)] => l.clone(),
                _ => "*".to_owned(),
            })
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// Whether every subject matching `pattern` (tokens and `*`) also matches the stream subject
/// filter `filter` (tokens, `*` and a trailing `>`).
pub fn covers(filter: &str, pattern: &str) -> bool {
    let f: Vec<&str> = filter.split('.').collect();
    let p: Vec<&str> = pattern.split('.').collect();
    for (i, ft) in f.iter().enumerate() {
        if *ft == ">" {
            return p.len() > i;
        }
        let Some(pt) = p.get(i) else {
            return false;
        };
        if *ft == "*" {
            continue;
        }
        if *pt == "*" || ft != pt {
            return false;
        }
    }
    f.len() == p.len()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn attrs(group: &str, ns: Option<&str>, name: Option<&str>) -> Attrs {
        Attrs {
            cluster: "prod".into(),
            group: group.into(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            resource: "configmaps".into(),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn escaping_examples() {
        assert_eq!(escape("web-1"), "web-1");
        assert_eq!(escape("kube-root-ca.crt"), "kube-root-ca%2Ecrt");
        assert_eq!(escape("networking.k8s.io"), "networking%2Ek8s%2Eio");
        assert_eq!(escape("a*b>c d"), "a%2Ab%3Ec%20d");
        assert_eq!(escape("system:node_x%"), "system%3Anode%5Fx%25");
        assert_eq!(escape(""), "_");
        assert_eq!(escape("_"), "%5F");
        assert_eq!(escape("é"), "%C3%A9");
        assert_eq!(unescape("_").unwrap(), "");
        assert_eq!(unescape("kube-root-ca%2ecrt").unwrap(), "kube-root-ca.crt");
        assert!(unescape("a%2").is_err());
        assert!(unescape("a.b").is_err());
        assert!(unescape("%FF").is_err());
        assert!(unescape("").is_err());
    }

    #[test]
    fn default_template_renders_one_subject_per_object() {
        let t = Template::parse(crate::config::DEFAULT_NATS_SUBJECT).unwrap();
        assert_eq!(
            t.render(&attrs("core", Some("demo"), Some("kube-root-ca.crt"))),
            "kubewire.prod.core.ConfigMap.demo.kube-root-ca%2Ecrt"
        );
        // Cluster-scoped object, named group.
        assert_eq!(
            t.render(&attrs(
                "rbac.authorization.k8s.io",
                None,
                Some("system:admin")
            )),
            "kubewire.prod.rbac%2Eauthorization%2Ek8s%2Eio.ConfigMap._.system%3Aadmin"
        );
        // Relist marker of a namespaced stream: no name.
        assert_eq!(
            t.render(&attrs("core", Some("demo"), None)),
            "kubewire.prod.core.ConfigMap.demo._"
        );
        assert_eq!(t.wildcard(), "kubewire.*.*.*.*.*");
    }

    #[test]
    fn mixed_tokens_and_every_placeholder() {
        let t =
            Template::parse("x.c-{cluster}.{group}.{version}.{kind}.{resource}.{namespace}.{name}")
                .unwrap();
        assert_eq!(
            t.render(&attrs("apps", Some("a"), Some("b"))),
            "x.c-prod.apps.v1.ConfigMap.configmaps.a.b"
        );
        assert_eq!(t.wildcard(), "x.*.*.*.*.*.*.*");
    }

    #[test]
    fn bad_templates_say_why() {
        for (t, why) in [
            ("", "empty"),
            ("a..{namespace}.{name}", "empty"),
            ("a.{namespace}.{name}.", "empty"),
            ("a.{nope}.{namespace}.{name}", "unknown placeholder {nope}"),
            ("a.{name.{namespace}", "unclosed"),
            ("a.*.{namespace}.{name}", "not allowed"),
            ("a.>.{namespace}.{name}", "not allowed"),
            ("a b.{namespace}.{name}", "not allowed"),
            ("a}.{namespace}.{name}", "not allowed"),
            ("kubewire.{cluster}.{name}", "{namespace} and {name}"),
        ] {
            let e = Template::parse(t).unwrap_err();
            assert!(e.contains(why), "{t:?}: {e}");
        }
    }

    #[test]
    fn coverage_of_the_template_by_stream_subjects() {
        let p = "kubewire.*.*.*.*.*";
        assert!(covers("kubewire.>", p));
        assert!(covers(">", p));
        assert!(covers("kubewire.*.*.*.*.*", p));
        assert!(!covers("kubewire.prod.>", p));
        assert!(!covers("kubewire.*.*.*.*", p));
        assert!(!covers("kubewire.*.*.*.*.*.*", p));
        assert!(!covers("other.>", p));
        assert!(covers("kw.prod.>", "kw.prod.*.*"));
        assert!(!covers("kw.prod.*.*.>", "kw.prod.*.*"));
    }

    proptest! {
        #[test]
        fn escape_round_trips_and_gives_valid_tokens(s in any::<String>()) {
            let t = escape(&s);
            prop_assert!(is_valid_token(&t), "{t:?}");
            prop_assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'%' || b == b'_'));
            prop_assert_eq!(unescape(&t).unwrap(), s);
        }

        #[test]
        fn kubernetes_like_values_round_trip(s in "[a-z0-9._:*> -]{0,40}") {
            let t = escape(&s);
            prop_assert!(is_valid_token(&t));
            prop_assert_eq!(unescape(&t).unwrap(), s);
        }

        #[test]
        fn rendered_subjects_are_valid_and_match_the_wildcard(
            ns in proptest::option::of("[a-z0-9.]{0,12}"),
            name in proptest::option::of(any::<String>()),
            group in "[a-z.]{0,12}",
        ) {
            let t = Template::parse(crate::config::DEFAULT_NATS_SUBJECT).unwrap();
            let subject = t.render(&attrs(&group, ns.as_deref(), name.as_deref()));
            let tokens: Vec<&str> = subject.split('.').collect();
            prop_assert_eq!(tokens.len(), 6);
            prop_assert!(tokens.iter().all(|t| is_valid_token(t)));
            prop_assert!(covers(&t.wildcard(), &subject));
            prop_assert_eq!(unescape(tokens[4]).unwrap(), ns.unwrap_or_default());
            prop_assert_eq!(unescape(tokens[5]).unwrap(), name.unwrap_or_default());
        }
    }
}
