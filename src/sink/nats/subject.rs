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
use crate::envelope::template::{Placeholder, Segment, Template};

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

/// A parsed subject template: the one [`Template`] type of every sink, with the rules of a
/// NATS subject on top (non-empty tokens, no wildcards in literals, one object per subject)
/// and NATS's escaping of every value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubjectTemplate {
    template: Template,
    /// The subject filter matching every subject it renders.
    wildcard: String,
}

impl SubjectTemplate {
    /// Parses and checks a subject template; `Err` says what is wrong.
    pub fn parse(text: &str) -> Result<SubjectTemplate, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        // Placeholders hold no '.', so the tokens can be read off the text itself.
        if let Some(i) = text.split('.').position(str::is_empty) {
            return Err(format!(
                "token {} is empty (leading, trailing or doubled '.')",
                i + 1
            ));
        }
        let template = Template::parse(text, Placeholder::ALL).map_err(|e| e.to_string())?;
        // Tokens in order; `true` where a placeholder makes the token vary.
        let mut tokens: Vec<(String, bool)> = vec![(String::new(), false)];
        let mut has = Vec::new();
        for segment in template.segments() {
            match segment {
                Segment::Literal(lit) => {
                    for (i, piece) in lit.split('.').enumerate() {
                        if i > 0 {
                            tokens.push((String::new(), false));
                        }
                        if !piece.is_empty() && !is_valid_token(piece) {
                            return Err(format!(
                                "{piece:?} is not allowed in a subject (no '*', '>', '}}' or whitespace)"
                            ));
                        }
                        tokens
                            .last_mut()
                            .expect("one token at least")
                            .0
                            .push_str(piece);
                    }
                }
                Segment::Var(p) => {
                    has.push(p);
                    tokens.last_mut().expect("one token at least").1 = true;
                }
            }
        }
        if !(has.contains(&Placeholder::Namespace) && has.contains(&Placeholder::Name)) {
            return Err(
                "must contain {namespace} and {name}: one object, one subject (per-object order)"
                    .into(),
            );
        }
        let wildcard = tokens
            .iter()
            .map(|(lit, var)| if *var { "*" } else { lit.as_str() })
            .collect::<Vec<_>>()
            .join(".");
        Ok(SubjectTemplate { template, wildcard })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        self.template.as_str()
    }

    /// The subject of an event: every value escaped into a valid token.
    pub fn render(&self, attrs: &Attrs) -> String {
        self.template.render_with(attrs, |out, value| {
            out.push_str(&escape(value.unwrap_or("")))
        })
    }

    /// The template with every token holding a placeholder replaced by `*`: the subject
    /// filter matching every subject it renders.
    pub fn wildcard(&self) -> String {
        self.wildcard.clone()
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
        let t = SubjectTemplate::parse(crate::sink::nats::config::DEFAULT_SUBJECT).unwrap();
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
        let t = SubjectTemplate::parse(
            "x.c-{cluster}.{group}.{version}.{kind}.{resource}.{namespace}.{name}",
        )
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
            ("a.{cluster.{namespace}.{name}", "unclosed"),
            ("a.{name.{namespace}", "unclosed"),
            ("a.*.{namespace}.{name}", "not allowed"),
            ("a.>.{namespace}.{name}", "not allowed"),
            ("a b.{namespace}.{name}", "not allowed"),
            ("a}.{namespace}.{name}", "without"),
            ("kubewire.{cluster}.{name}", "{namespace} and {name}"),
        ] {
            let e = SubjectTemplate::parse(t).unwrap_err();
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
            let t = SubjectTemplate::parse(crate::sink::nats::config::DEFAULT_SUBJECT).unwrap();
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
