//! OpenTelemetry Collector helpers shared by the trace tests (`tests/traces.rs`,
//! `tests/traces_relist.rs`): start the collector of `dev/testenv`, read the spans its file
//! exporter wrote, and read an event's `traceparent`.
//!
//! Used as `mod common; mod harness; mod otel_support;`.
#![allow(dead_code)]

use std::collections::HashMap;

use serde_json::Value;

use crate::common;

/// The collector's endpoint and output file, from `dev/testenv env` (after starting it).
pub fn collector() -> (String, String) {
    common::testenv(&["up", "otelcol"]);
    let env = common::testenv(&["env"]);
    let get = |name: &str| {
        env.lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("dev/testenv env has no {name}"))
    };
    (
        get("OTEL_COLLECTOR_ENDPOINT"),
        get("OTEL_COLLECTOR_TRACES_FILE"),
    )
}

/// One span as the collector's file exporter wrote it (OTLP/JSON: ids in hex).
#[derive(Debug, Clone)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    pub attributes: HashMap<String, String>,
    pub links: Vec<(String, String)>,
}

fn attrs(v: &Value) -> HashMap<String, String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_owned();
            let value = &kv["value"];
            let text = value["stringValue"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| value["intValue"].as_str().map(str::to_owned))
                .or_else(|| value["boolValue"].as_bool().map(|b| b.to_string()))
                .unwrap_or_else(|| value.to_string());
            Some((key, text))
        })
        .collect()
}

/// Every span of service `service` in the collector's output so far.
pub fn spans_of(file: &str, service: &str) -> Vec<Span> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        // A line being written may be incomplete: the next poll reads it whole.
        let Ok(doc) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        for rs in doc["resourceSpans"].as_array().into_iter().flatten() {
            if attrs(&rs["resource"]["attributes"]).get("service.name") != Some(&service.into()) {
                continue;
            }
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for s in ss["spans"].as_array().into_iter().flatten() {
                    let str_of = |k: &str| s[k].as_str().unwrap_or_default().to_owned();
                    out.push(Span {
                        trace_id: str_of("traceId"),
                        span_id: str_of("spanId"),
                        parent_span_id: str_of("parentSpanId"),
                        name: str_of("name"),
                        attributes: attrs(&s["attributes"]),
                        links: s["links"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|l| {
                                (
                                    l["traceId"].as_str().unwrap_or_default().to_owned(),
                                    l["spanId"].as_str().unwrap_or_default().to_owned(),
                                )
                            })
                            .collect(),
                    });
                }
            }
        }
    }
    out
}

/// `00-<trace>-<span>-01` → (trace, span).
pub fn trace_of(event: &Value) -> (String, String) {
    let tp = event["traceparent"].as_str().expect("traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "traceparent {tp}");
    assert_eq!((parts[0], parts[3]), ("00", "01"), "traceparent {tp}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// The `telemetry:` block for kubewire's config: export to `endpoint` as `service`, every
/// `delay_ms`; `extra` adds indented `otlp` fields.
pub fn telemetry_yaml(endpoint: &str, service: &str, delay_ms: u64, extra: &str) -> String {
    format!(
        "telemetry:\n  otlp:\n    endpoint: {endpoint}\n    serviceName: {service}\n    \
         scheduledDelayMs: {delay_ms}\n{extra}"
    )
}
