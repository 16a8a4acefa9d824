//! The one template type over an event's [`Attrs`]: `kubewire.{cluster}.{resource}`,
//! `{namespace}/{name}`. Every sink uses it — Kafka topics and keys (values written as they
//! are), NATS subjects (each value escaped into one subject token, see
//! `sink::nats::subject`) — parsed (and so checked) once, from the configuration, rendered
//! per event with the sink's own escaping. Rendering never fails.

use std::fmt;

use super::Attrs;

/// One `{placeholder}` of a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placeholder {
    /// `{cluster}`: the configured cluster name.
    Cluster,
    /// `{group}`: the API group, `core` for the core group.
    Group,
    /// `{version}`: the served version, e.g. `v1`.
    Version,
    /// `{kind}`: e.g. `ConfigMap`.
    Kind,
    /// `{resource}`: the plural resource name, e.g. `configmaps`.
    Resource,
    /// `{namespace}`: the object's namespace (a marker's: the stream's); may be absent.
    Namespace,
    /// `{name}`: the object's name; absent for relist markers.
    Name,
}

impl Placeholder {
    /// Every placeholder, in documentation order.
    pub const ALL: &'static [Placeholder] = &[
        Placeholder::Cluster,
        Placeholder::Group,
        Placeholder::Version,
        Placeholder::Kind,
        Placeholder::Resource,
        Placeholder::Namespace,
        Placeholder::Name,
    ];

    /// The placeholders of a stream (everything but `{name}`): topics and subjects of whole
    /// streams.
    pub const STREAM: &'static [Placeholder] = &[
        Placeholder::Cluster,
        Placeholder::Group,
        Placeholder::Version,
        Placeholder::Kind,
        Placeholder::Resource,
        Placeholder::Namespace,
    ];

    /// The name between the braces.
    pub fn as_str(self) -> &'static str {
        match self {
            Placeholder::Cluster => "cluster",
            Placeholder::Group => "group",
            Placeholder::Version => "version",
            Placeholder::Kind => "kind",
            Placeholder::Resource => "resource",
            Placeholder::Namespace => "namespace",
            Placeholder::Name => "name",
        }
    }

    /// This placeholder's value in `a` (`None`: an absent namespace or name).
    pub fn value(self, a: &Attrs) -> Option<&str> {
        match self {
            Placeholder::Cluster => Some(&a.cluster),
            Placeholder::Group => Some(&a.group),
            Placeholder::Version => Some(&a.version),
            Placeholder::Kind => Some(&a.kind),
            Placeholder::Resource => Some(&a.resource),
            Placeholder::Namespace => a.namespace.as_deref(),
            Placeholder::Name => a.name.as_deref(),
        }
    }
}

/// Why a template string is not a template.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The empty string.
    #[error("is empty")]
    Empty,
    /// A `{` with no `}` before the next `{` or the end; the byte offset of the `{`.
    #[error("has an unclosed '{{' at byte {0}")]
    Unclosed(usize),
    /// A `}` outside a placeholder; its byte offset.
    #[error("has a '}}' without '{{' at byte {0}")]
    Unopened(usize),
    /// A placeholder not among those allowed where the template is used.
    #[error("has an unknown placeholder {{{name}}} (expected one of {expected})")]
    Unknown {
        /// The name between the braces.
        name: String,
        /// The allowed placeholders, as `{cluster}, {group}, ...`.
        expected: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Var(Placeholder),
}

/// One piece of a parsed template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Text written as it is.
    Literal(&'a str),
    /// A value substituted per event.
    Var(Placeholder),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`, accepting only the placeholders in `allowed`.
    pub fn parse(text: &str, allowed: &[Placeholder]) -> Result<Template, TemplateError> {
        if text.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(i) = rest.find(['{', '}']) {
            if rest.as_bytes()[i] == b'}' {
                return Err(TemplateError::Unopened(offset + i));
            }
            literal.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let end = after
                .find(['{', '}'])
                .filter(|&j| after.as_bytes()[j] == b'}')
                .ok_or(TemplateError::Unclosed(offset + i))?;
            let name = &after[..end];
            let p = allowed
                .iter()
                .copied()
                .find(|p| p.as_str() == name)
                .ok_or_else(|| TemplateError::Unknown {
                    name: name.to_owned(),
                    expected: allowed
                        .iter()
                        .map(|p| format!("{{{}}}", p.as_str()))
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(Part::Var(p));
            let consumed = i + 1 + end + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: text.to_owned(),
            parts,
        })
    }

    /// The text without placeholders, if the template has none.
    pub fn as_static(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [Part::Literal(s)] => Some(s),
            _ => None,
        }
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Its pieces, in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'_>> {
        self.parts.iter().map(|p| match p {
            Part::Literal(s) => Segment::Literal(s),
            Part::Var(v) => Segment::Var(*v),
        })
    }

    /// The literal text between placeholders.
    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.segments().filter_map(|s| match s {
            Segment::Literal(l) => Some(l),
            Segment::Var(_) => None,
        })
    }

    /// Renders the template for `attrs`, values as they are; an absent namespace or name
    /// renders as `missing`.
    pub fn render(&self, attrs: &Attrs, missing: &str) -> String {
        self.render_with(attrs, |out, value| out.push_str(value.unwrap_or(missing)))
    }

    /// Renders the template for `attrs`, each value written by the sink's `write` (its
    /// escaping rule; `None`: an absent namespace or name).
    pub fn render_with(&self, attrs: &Attrs, write: impl Fn(&mut String, Option<&str>)) -> String {
        let mut out = String::with_capacity(self.source.len() + 32);
        for part in &self.parts {
            match part {
                Part::Literal(s) => out.push_str(s),
                Part::Var(p) => write(&mut out, p.value(attrs)),
            }
        }
        out
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attrs(ns: Option<&str>, name: Option<&str>) -> Attrs {
        Attrs {
            cluster: "prod".into(),
            group: "apps".into(),
            version: "v1".into(),
            kind: "Deployment".into(),
            resource: "deployments".into(),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let t = Template::parse(
            "{cluster}.{group}.{version}.{kind}.{resource}.{namespace}.{name}",
            Placeholder::ALL,
        )
        .unwrap();
        assert_eq!(
            t.render(&attrs(Some("web"), Some("api")), "_"),
            "prod.apps.v1.Deployment.deployments.web.api"
        );
    }

    #[test]
    fn absent_namespace_renders_as_the_missing_text() {
        let t = Template::parse("k.{namespace}.{resource}", Placeholder::STREAM).unwrap();
        assert_eq!(t.render(&attrs(None, None), "_"), "k._.deployments");
        let t = Template::parse("{namespace}/{name}", Placeholder::ALL).unwrap();
        assert_eq!(t.render(&attrs(None, Some("n")), ""), "/n");
    }

    #[test]
    fn static_templates_are_recognised() {
        let t = Template::parse("kubewire.events", Placeholder::STREAM).unwrap();
        assert_eq!(t.as_static(), Some("kubewire.events"));
        assert_eq!(t.render(&attrs(None, None), "_"), "kubewire.events");
        let t = Template::parse("a.{cluster}", Placeholder::STREAM).unwrap();
        assert_eq!(t.as_static(), None);
        assert_eq!(t.literals().collect::<Vec<_>>(), vec!["a."]);
    }

    #[test]
    fn syntax_errors_are_reported() {
        let p = |s| Template::parse(s, Placeholder::STREAM).unwrap_err();
        assert_eq!(p(""), TemplateError::Empty);
        assert_eq!(p("a.{cluster"), TemplateError::Unclosed(2));
        assert_eq!(p("a}"), TemplateError::Unopened(1));
        assert_eq!(p("{a{b}"), TemplateError::Unclosed(0));
        let e = p("t.{name}");
        assert!(
            matches!(&e, TemplateError::Unknown { name, .. } if name == "name"),
            "{e}"
        );
        assert!(e.to_string().contains("{namespace}"), "{e}");
    }

    proptest! {
        #[test]
        fn parsing_and_rendering_never_panic(
            text in ".{0,40}",
            ns in proptest::option::of(".{0,10}"),
            name in proptest::option::of(".{0,10}"),
        ) {
            if let Ok(t) = Template::parse(&text, Placeholder::ALL) {
                let out = t.render(&attrs(ns.as_deref(), name.as_deref()), "_");
                if !text.contains('{') {
                    prop_assert_eq!(out, text);
                }
            }
        }

        #[test]
        fn placeholder_soup_renders(parts in proptest::collection::vec(0usize..9, 0..12)) {
            let mut text = String::new();
            for p in parts {
                match p {
                    7 => text.push_str("._-"),
                    8 => text.push('{'),
                    i => text.push_str(&format!("{{{}}}", Placeholder::ALL[i].as_str())),
                }
            }
            if let Ok(t) = Template::parse(&text, Placeholder::ALL) {
                let _ = t.render(&attrs(Some("ns"), None), "");
            }
        }
    }
}
