//! `kubewire print-config`: the configuration kubewire runs with — defaults filled in,
//! `KUBEWIRE__*` overrides and the global flags applied — with secrets masked and, for each
//! value that is not the default, where it came from (`file`, `environment`, `flag`).
//!
//! Origins are found by loading three times: the file alone, the file with the
//! environment, and the result with the flags; a value that changes between two loads came
//! from the later source; one the file's own text sets came from the file.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{CliError, EXIT_OK, Global, PrintOutput};
use crate::config::{Config, Format};

/// What stands in for a masked value.
pub const MASK: &str = "********";

/// Runs `print-config`.
pub fn print_config(global: &Global, output: PrintOutput) -> Result<u8, CliError> {
    super::logging::init_command(global);
    let (path, _) = super::paths::resolve_config_path(
        global.config.as_deref(),
        std::env::var("KUBEWIRE_CONFIG").ok().as_deref(),
        &|p| p.exists(),
    );
    let text = std::fs::read_to_string(&path).map_err(|e| {
        CliError::Config(vec![crate::config::Problem::new(
            "",
            format!("cannot read configuration file {}: {e}", path.display()),
        )])
    })?;
    let format = Format::from_path(&path).ok_or_else(|| {
        CliError::Config(vec![crate::config::Problem::new(
            "",
            format!(
                "configuration file {} must end in .yaml, .yml or .toml",
                path.display()
            ),
        )])
    })?;
    let env: Vec<(String, String)> = std::env::vars().collect();
    let (config, origins) = effective(&text, format, &env, global)?;
    let masked = mask(serde_json::to_value(&config).expect("the configuration serializes"));
    let out = match output {
        PrintOutput::Json => {
            serde_json::to_string_pretty(&serde_json::json!({
                "path": path.display().to_string(),
                "config": masked,
                "origins": origins,
            }))
            .expect("JSON")
                + "\n"
        }
        PrintOutput::Yaml => format!("# {}\n", path.display()) + &yaml(&masked, &origins),
    };
    print!("{out}");
    Ok(EXIT_OK)
}

/// The effective configuration and the origin of every non-default leaf (pure but for the
/// parse).
pub fn effective(
    text: &str,
    format: Format,
    env: &[(String, String)],
    global: &Global,
) -> Result<(Config, BTreeMap<String, &'static str>), CliError> {
    let no_env: [(&str, &str); 0] = [];
    let bad = |e: crate::config::ConfigError| CliError::Config(e.problems());
    let file_only = Config::from_str_with_env(text, format, no_env).map_err(bad)?;
    let with_env =
        Config::from_str_with_env(text, format, env.iter().map(|(k, v)| (k, v))).map_err(bad)?;
    let mut with_flags = with_env.clone();
    super::apply_cluster_flags(&mut with_flags, global);
    let raw = raw_file(text, format);
    let (file_v, env_v, flag_v) = (
        leaves(&serde_json::to_value(&file_only).expect("serializes")),
        leaves(&serde_json::to_value(&with_env).expect("serializes")),
        leaves(&serde_json::to_value(&with_flags).expect("serializes")),
    );
    let raw_v = leaves(&raw);
    let mut origins = BTreeMap::new();
    for (path, value) in &flag_v {
        let origin = if env_v.get(path) != Some(value) {
            "flag"
        } else if file_v.get(path) != Some(value) {
            "environment"
        } else if raw_v.contains_key(path)
            || raw_v.keys().any(|k| k.starts_with(&format!("{path}.")))
        {
            "file"
        } else {
            continue;
        };
        origins.insert(path.clone(), origin);
    }
    Ok((with_flags, origins))
}

/// The file's own keys and values, as written (no defaults).
fn raw_file(text: &str, format: Format) -> Value {
    let f = match format {
        Format::Yaml => config::FileFormat::Yaml,
        Format::Toml => config::FileFormat::Toml,
    };
    config::Config::builder()
        .add_source(config::File::from_str(text, f))
        .build()
        .ok()
        .and_then(|c| c.try_deserialize::<Value>().ok())
        .unwrap_or(Value::Null)
}

/// Every leaf of `v` (scalars, empty containers) by path: `sink.brokers`,
/// `resources[0].namespaces[1]`. Nulls (unset options) are left out.
pub fn leaves(v: &Value) -> BTreeMap<String, Value> {
    fn walk(v: &Value, path: String, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, v) in m {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(v, p, out);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                for (i, v) in a.iter().enumerate() {
                    walk(v, format!("{path}[{i}]"), out);
                }
            }
            Value::Null => {}
            other => {
                out.insert(path, other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(v, String::new(), &mut out);
    out
}

/// Whether a pass-through property (`sink.properties`) holds a secret, by its name.
fn secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "jaas",
        "credential",
        "oauthbearer",
        ".pem",
        "key",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Masks what may be a secret: `sink.properties` values with secret-like names, and the
/// password of a URL's `user:password@`. (Secrets proper are never in the configuration:
/// `passwordEnv`, `{file: ...}` name where they are, and are shown as such.)
pub fn mask(mut v: Value) -> Value {
    if let Some(props) = v
        .pointer_mut("/sink/properties")
        .and_then(Value::as_object_mut)
    {
        for (k, val) in props.iter_mut() {
            if secret_property(k) {
                *val = Value::String(MASK.into());
            }
        }
    }
    for ptr in ["/sink/url", "/sink/brokers", "/telemetry/otlp/endpoint"] {
        if let Some(Value::String(s)) = v.pointer_mut(ptr) {
            *s = s
                .split(',')
                .map(mask_url_password)
                .collect::<Vec<_>>()
                .join(",");
        }
    }
    v
}

/// `nats://user:pass@host` → `nats://user:********@host`.
fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:{MASK}@{host}"),
        None => url.to_owned(),
    }
}

/// YAML for `v`, each non-default leaf commented with its origin.
pub fn yaml(v: &Value, origins: &BTreeMap<String, &'static str>) -> String {
    let mut out = String::new();
    emit(v, "", 0, origins, &mut out);
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        // JSON scalars are YAML scalars (strings quoted, so nothing is misread).
        other => other.to_string(),
    }
}

fn is_leaf(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => true,
    }
}

fn comment(path: &str, origins: &BTreeMap<String, &'static str>) -> String {
    origins
        .get(path)
        .map(|o| format!("  # {o}"))
        .unwrap_or_default()
}

fn emit(
    v: &Value,
    path: &str,
    indent: usize,
    origins: &BTreeMap<String, &'static str>,
    out: &mut String,
) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let key = serde_json::to_string(k).expect("a string");
                let key = if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    k.clone()
                } else {
                    key
                };
                if is_leaf(v) {
                    out.push_str(&format!(
                        "{pad}{key}: {}{}\n",
                        scalar(v),
                        comment(&p, origins)
                    ));
                } else {
                    out.push_str(&format!("{pad}{key}:\n"));
                    emit(v, &p, indent + 2, origins, out);
                }
            }
        }
        Value::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                if is_leaf(item) {
                    out.push_str(&format!(
                        "{pad}- {}{}\n",
                        scalar(item),
                        comment(&p, origins)
                    ));
                } else {
                    let mut inner = String::new();
                    emit(item, &p, indent + 2, origins, &mut inner);
                    // The first line of the item's block goes after the dash.
                    out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", scalar(other))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "resources:\n  - resource: configmaps\n    namespaces: [a]\nsink:\n  type: kafka\n  brokers: b:9092\n  properties:\n    sasl.oauthbearer.config: 'principal=x'\n    linger.ms: '20'\nwatch:\n  pageSize: 100\n";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn each_non_default_value_names_where_it_came_from() {
        let global = Global {
            context: Some("flag-ctx".into()),
            ..Default::default()
        };
        let (config, origins) = effective(
            FILE,
            Format::Yaml,
            &env(&[("KUBEWIRE__WATCH__TIMEOUT_SECONDS", "100"), ("OTHER", "x")]),
            &global,
        )
        .unwrap();
        assert_eq!(config.watch.timeout_seconds, 100);
        assert_eq!(origins["watch.pageSize"], "file");
        assert_eq!(origins["sink.brokers"], "file");
        assert_eq!(origins["resources[0].namespaces[0]"], "file");
        assert_eq!(origins["watch.timeoutSeconds"], "environment");
        assert_eq!(origins["clusters[0].context"], "flag");
        // defaults are not annotated
        assert!(!origins.contains_key("watch.backoffMaxMs"), "{origins:?}");
        assert!(!origins.contains_key("resources[0].initial"), "{origins:?}");
    }

    #[test]
    fn secrets_are_masked_and_the_yaml_is_commented() {
        let (config, origins) = effective(FILE, Format::Yaml, &[], &Global::default()).unwrap();
        let mut v = mask(serde_json::to_value(&config).unwrap());
        assert_eq!(v["sink"]["properties"]["sasl.oauthbearer.config"], MASK);
        assert_eq!(v["sink"]["properties"]["linger.ms"], "20");
        v["sink"]["brokers"] = "x".into();
        let text = yaml(&v, &origins);
        assert!(text.contains("  pageSize: 100  # file\n"), "{text}");
        assert!(text.contains("resources:\n  - "), "{text}");
        assert!(
            text.contains("resource: \"configmaps\"  # file\n"),
            "{text}"
        );
        assert!(
            text.contains("    \"sasl.oauthbearer.config\": \"********\"  # file\n"),
            "{text}"
        );
        assert!(!text.contains("principal=x"));
        assert_eq!(
            mask_url_password("nats://u:p@h:4222"),
            format!("nats://u:{MASK}@h:4222")
        );
        assert_eq!(mask_url_password("nats://h:4222"), "nats://h:4222");
    }
}
