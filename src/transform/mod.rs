//! The transform stage (between *change* and *envelope*): the default, per-resource
//! rewrites of an object before it is published.
//!
//! - `metadata.managedFields` is dropped (server-side apply bookkeeping, often larger than
//!   the object itself).
//! - The `kubectl.kubernetes.io/last-applied-configuration` annotation is dropped (a full
//!   copy of the object as last applied; for a Secret it holds the values in clear). When it
//!   was the only annotation, the then empty `annotations` map is removed too.
//! - For core-group `secrets`, every value of `data` and `stringData` is replaced with
//!   `kubewire-redacted:hmac-sha256:<32 hex>`, the first 128 bits of
//!   HMAC-SHA256(key, key-name ‖ 0x00 ‖ value). Equal values give equal markers (under the
//!   same key), so a consumer sees *that* a value changed, never *what* it is. The value
//!   hashed is the string as the API server sent it (base64 for `data`).
//!
//! Each rewrite is switched by [`TransformConfig`]. Turning `redactSecrets` off publishes
//! Secret values.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::config::TransformConfig;
use crate::event::ResourceInfo;

/// The annotation `kubectl apply` writes: a full copy of the applied object.
pub const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Every redacted value starts with this.
pub const REDACTION_PREFIX: &str = "kubewire-redacted:hmac-sha256:";

/// Errors of the transform stage.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// Redaction needs a key, and an empty one would make markers a plain hash of the value.
    #[error("the Secret redaction key is empty")]
    EmptyKey,
}

/// Applies the configured transforms of one resource entry.
#[derive(Clone)]
pub struct Transformer {
    config: TransformConfig,
    key: Vec<u8>,
}

impl std::fmt::Debug for Transformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Transformer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Transformer {
    /// A transformer for `config`, redacting with `key` (the HMAC key; must not be empty
    /// when redaction is on).
    pub fn new(config: &TransformConfig, key: Vec<u8>) -> Result<Self, TransformError> {
        if config.redact_secrets && key.is_empty() {
            return Err(TransformError::EmptyKey);
        }
        Ok(Self {
            config: config.clone(),
            key,
        })
    }

    /// Rewrites `object` (a Kubernetes object as JSON) in place.
    pub fn apply(&self, resource: &ResourceInfo, object: &mut Value) {
        let Some(obj) = object.as_object_mut() else {
            return;
        };
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            if self.config.strip_managed_fields {
                meta.remove("managedFields");
            }
            if self.config.strip_last_applied {
                let now_empty = match meta.get_mut("annotations").and_then(Value::as_object_mut) {
                    Some(annotations) => {
                        annotations.remove(LAST_APPLIED_ANNOTATION).is_some()
                            && annotations.is_empty()
                    }
                    None => false,
                };
                if now_empty {
                    meta.remove("annotations");
                }
            }
        }
        if self.config.redact_secrets && is_secret(resource) {
            for field in ["data", "stringData"] {
                if let Some(map) = obj.get_mut(field).and_then(Value::as_object_mut) {
                    for (name, value) in map.iter_mut() {
                        *value = Value::String(self.marker(name, value));
                    }
                }
            }
        }
    }

    /// `kubewire-redacted:hmac-sha256:<first 32 hex of HMAC-SHA256(key, name ‖ 0 ‖ value)>`.
    pub fn marker(&self, name: &str, value: &Value) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key)
            .expect("HMAC-SHA256 accepts keys of any length");
        mac.update(name.as_bytes());
        mac.update(&[0]);
        match value {
            Value::String(s) => mac.update(s.as_bytes()),
            // Not a string (the API server never sends that): hash its JSON text.
            other => mac.update(other.to_string().as_bytes()),
        }
        let digest = mac.finalize().into_bytes();
        format!("{REDACTION_PREFIX}{}", hex::encode(&digest[..16]))
    }
}

/// Core-group `secrets`, whatever the version.
fn is_secret(resource: &ResourceInfo) -> bool {
    resource.group.is_empty() && resource.resource == "secrets"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info(group: &str, resource: &str, kind: &str) -> ResourceInfo {
        ResourceInfo {
            group: group.into(),
            version: "v1".into(),
            resource: resource.into(),
            kind: kind.into(),
            namespaced: true,
        }
    }

    fn secrets() -> ResourceInfo {
        info("", "secrets", "Secret")
    }

    fn on() -> Transformer {
        Transformer::new(&TransformConfig::default(), b"test-key".to_vec()).unwrap()
    }

    fn secret(password: &str) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {
                "name": "db", "namespace": "ns", "uid": "u", "resourceVersion": "1",
                "annotations": {LAST_APPLIED_ANNOTATION: format!("{{\"data\":{{\"password\":\"{password}\"}}}}")},
                "managedFields": [{"manager": "kubectl"}]
            },
            "type": "Opaque",
            "data": {"password": password, "user": "YWRtaW4="},
            "stringData": {"token": "plain-text-token"}
        })
    }

    #[test]
    fn strips_managed_fields() {
        let mut o = json!({"metadata": {"name": "a", "managedFields": [{"manager": "x"}]}});
        on().apply(&info("", "configmaps", "ConfigMap"), &mut o);
        assert_eq!(o, json!({"metadata": {"name": "a"}}));
    }

    #[test]
    fn strips_last_applied_and_keeps_other_annotations() {
        let mut o =
            json!({"metadata": {"annotations": {LAST_APPLIED_ANNOTATION: "{}", "team": "x"}}});
        on().apply(&info("apps", "deployments", "Deployment"), &mut o);
        assert_eq!(o, json!({"metadata": {"annotations": {"team": "x"}}}));
    }

    #[test]
    fn removes_annotations_map_emptied_by_stripping() {
        let mut o = json!({"metadata": {"annotations": {LAST_APPLIED_ANNOTATION: "{}"}}});
        on().apply(&info("", "configmaps", "ConfigMap"), &mut o);
        assert_eq!(o, json!({"metadata": {}}));
        // An annotations map that was already empty is left alone.
        let mut o = json!({"metadata": {"annotations": {}}});
        on().apply(&info("", "configmaps", "ConfigMap"), &mut o);
        assert_eq!(o, json!({"metadata": {"annotations": {}}}));
    }

    #[test]
    fn redacts_every_secret_value_and_never_leaks_it() {
        let mut o = secret("c2VjcmV0LXB3");
        on().apply(&secrets(), &mut o);
        let text = o.to_string();
        for leaked in ["c2VjcmV0LXB3", "YWRtaW4=", "plain-text-token"] {
            assert!(!text.contains(leaked), "{leaked} leaked: {text}");
        }
        for (field, key) in [
            ("data", "password"),
            ("data", "user"),
            ("stringData", "token"),
        ] {
            let v = o[field][key].as_str().unwrap();
            assert!(v.starts_with(REDACTION_PREFIX), "{v}");
            assert_eq!(v.len(), REDACTION_PREFIX.len() + 32);
        }
        assert_eq!(o["type"], "Opaque");
        assert_eq!(o["metadata"]["name"], "db");
    }

    #[test]
    fn same_value_same_marker_different_value_different_marker() {
        let t = on();
        let (mut a, mut b, mut c) = (secret("djE="), secret("djE="), secret("djI="));
        for o in [&mut a, &mut b, &mut c] {
            t.apply(&secrets(), o);
        }
        assert_eq!(a["data"]["password"], b["data"]["password"]);
        assert_ne!(a["data"]["password"], c["data"]["password"]);
        // The key name is bound in: equal values under different names differ.
        assert_ne!(t.marker("a", &json!("x")), t.marker("b", &json!("x")));
        // And the name/value boundary is unambiguous.
        assert_ne!(t.marker("ab", &json!("c")), t.marker("a", &json!("bc")));
        // A different key gives different markers.
        let other = Transformer::new(&TransformConfig::default(), b"other".to_vec()).unwrap();
        assert_ne!(t.marker("a", &json!("x")), other.marker("a", &json!("x")));
    }

    #[test]
    fn only_core_secrets_are_redacted() {
        let mut o = json!({"data": {"k": "v"}});
        on().apply(&info("", "configmaps", "ConfigMap"), &mut o);
        assert_eq!(o["data"]["k"], "v");
        let mut o = json!({"data": {"k": "v"}});
        on().apply(&info("example.com", "secrets", "Secret"), &mut o);
        assert_eq!(o["data"]["k"], "v");
    }

    #[test]
    fn each_transform_can_be_switched_off() {
        let off = TransformConfig {
            strip_managed_fields: false,
            strip_last_applied: false,
            redact_secrets: false,
        };
        let t = Transformer::new(&off, Vec::new()).unwrap();
        let mut o = secret("c2VjcmV0");
        let before = o.clone();
        t.apply(&secrets(), &mut o);
        assert_eq!(o, before);

        for (i, name) in ["managed", "last", "redact"].iter().enumerate() {
            let cfg = TransformConfig {
                strip_managed_fields: i != 0,
                strip_last_applied: i != 1,
                redact_secrets: i != 2,
            };
            let mut o = secret("c2VjcmV0");
            Transformer::new(&cfg, b"k".to_vec())
                .unwrap()
                .apply(&secrets(), &mut o);
            let m = &o["metadata"];
            assert_eq!(m.get("managedFields").is_some(), i == 0, "{name}");
            assert_eq!(m.get("annotations").is_some(), i == 1, "{name}");
            assert_eq!(o["data"]["password"] == "c2VjcmV0", i == 2, "{name}");
        }
    }

    #[test]
    fn redaction_requires_a_key() {
        assert!(matches!(
            Transformer::new(&TransformConfig::default(), Vec::new()),
            Err(TransformError::EmptyKey)
        ));
    }

    #[test]
    fn non_objects_and_missing_metadata_are_left_alone() {
        let t = on();
        let mut v = json!("text");
        t.apply(&secrets(), &mut v);
        assert_eq!(v, json!("text"));
        let mut v = json!({"data": null, "stringData": ["x"]});
        t.apply(&secrets(), &mut v);
        assert_eq!(v, json!({"data": null, "stringData": ["x"]}));
    }

    #[test]
    fn debug_never_prints_the_key() {
        let t = Transformer::new(&TransformConfig::default(), b"sekrit-key".to_vec()).unwrap();
        assert!(!format!("{t:?}").contains("sekrit"));
    }
}
