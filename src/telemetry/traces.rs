//! Traces: every published event is one span, `kubewire.event`, from its arrival in the watch
//! loop to the sink's acknowledgement, with child spans for the stages it went through
//! (`kubewire.transform`, `kubewire.encode`, `kubewire.publish`). That span's context *is* the
//! event's `traceparent` (envelope and sink headers), so a consumer continues the trace.
//! Lists, relists and watch requests are spans of their own (`kubewire.list`,
//! `kubewire.relist`, `kubewire.watch`); an event span links to the one that carried it.
//!
//! The spans are ordinary `tracing` spans with target [`TARGET`]. The log output never shows
//! them; only the OpenTelemetry layer, present when an OTLP endpoint is configured, does.
//! Without it, the span macros find no interested subscriber and return a disabled span
//! (a cached per-callsite check), and events carry a random trace context as before.
//!
//! Export: OTLP/gRPC (tonic) through the SDK's batch span processor, which queues finished
//! spans in a bounded channel and exports them from its own thread. A full queue drops new
//! spans; nothing on the data path ever waits for the collector.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanData, SpanExporter,
};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::registry::LookupSpan;

use crate::config::OtlpConfig;
use crate::envelope;
use crate::event::{Event, TraceContext};

/// The `tracing` target of the spans kubewire exports. The log filter turns it off.
pub const TARGET: &str = "kubewire::otel";

/// The log filter directive that keeps exported spans out of the log output.
pub const LOG_DIRECTIVE: &str = "kubewire::otel=off";

// Span names, for documentation and tests (the span macros need literals).

/// One published event, from its arrival in the watch loop to the sink's acknowledgement.
pub const EVENT_SPAN: &str = "kubewire.event";
/// Child of an event span: the transforms applied to its object.
pub const TRANSFORM_SPAN: &str = "kubewire.transform";
/// Child of an event span: the CloudEvents encoding.
pub const ENCODE_SPAN: &str = "kubewire.encode";
/// Child of an event span (a producer span): from the hand-over to the sink to its
/// acknowledgement.
pub const PUBLISH_SPAN: &str = "kubewire.publish";
/// A list (every page) of a stream without a checkpoint.
pub const LIST_SPAN: &str = "kubewire.list";
/// A reconciling relist (every page) of a stream with a checkpoint.
pub const RELIST_SPAN: &str = "kubewire.relist";
/// One watch request, with the cause of the (re)start.
pub const WATCH_SPAN: &str = "kubewire.watch";

/// Errors of trace export set-up.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// The OTLP/gRPC exporter cannot be built for the endpoint (e.g. an invalid URI).
    #[error("OTLP exporter for {endpoint}: {source}")]
    Exporter {
        /// The resolved OTLP endpoint.
        endpoint: String,
        /// The exporter builder's error.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// Where and how spans are exported: the configuration with the environment filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSettings {
    /// The OTLP/gRPC endpoint: configured, else `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    /// `service.name`: configured, else `OTEL_SERVICE_NAME`, else `kubewire`.
    pub service_name: String,
    /// Finished spans the batch processor queues before it drops new ones (at least 1).
    pub max_queue_size: usize,
    /// Spans per export request (1 to `max_queue_size`).
    pub max_export_batch_size: usize,
    /// How long the batch processor waits between two exports.
    pub scheduled_delay: Duration,
    /// How long one export request may take.
    pub export_timeout: Duration,
}

impl ExportSettings {
    /// `None` (traces off) unless an endpoint is configured, in the file or by
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`.
    /// `OTEL_SDK_DISABLED=true` and `OTEL_TRACES_EXPORTER=none` turn them off too.
    /// `env` reads a variable (the process environment in `main`, a map in tests).
    pub fn resolve(config: &OtlpConfig, env: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let var = |name: &str| {
            env(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
        {
            return None;
        }
        let endpoint = config
            .endpoint
            .clone()
            .filter(|e| !e.trim().is_empty())
            .or_else(|| var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))?;
        let service_name = config
            .service_name
            .clone()
            .or_else(|| var("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| "kubewire".into());
        Some(Self {
            endpoint,
            service_name,
            max_queue_size: config.max_queue_size.max(1),
            max_export_batch_size: config
                .max_export_batch_size
                .clamp(1, config.max_queue_size.max(1)),
            scheduled_delay: Duration::from_millis(config.scheduled_delay_ms.max(1)),
            export_timeout: Duration::from_millis(config.export_timeout_ms.max(1)),
        })
    }
}

/// The running exporter. Keep it until the end, then [`Traces::shutdown`] flushes it.
pub struct Traces {
    provider: SdkTracerProvider,
    endpoint: String,
}

impl Traces {
    /// Builds the exporter and the batch span processor. Must run inside the tokio runtime
    /// (the gRPC channel belongs to it). Connects lazily: a collector that is down is not an
    /// error here, only a warning in the log when an export fails.
    pub fn start(settings: &ExportSettings) -> Result<Self, TracesError> {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(settings.endpoint.clone())
            .with_timeout(settings.export_timeout)
            .build()
            .map_err(|source| TracesError::Exporter {
                endpoint: settings.endpoint.clone(),
                source,
            })?;
        let exporter = Reporting {
            inner: exporter,
            endpoint: settings.endpoint.clone(),
            failing: AtomicBool::new(false),
        };
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(settings.max_queue_size)
            .with_max_export_batch_size(settings.max_export_batch_size)
            .with_scheduled_delay(settings.scheduled_delay)
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(settings.service_name.clone())
            .with_attribute(opentelemetry::KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION"),
            ))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(
                BatchSpanProcessor::builder(exporter)
                    .with_batch_config(batch)
                    .build(),
            )
            // Every event's traceparent says "sampled": sample in the collector, not here.
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(resource)
            .build();
        Ok(Self {
            provider,
            endpoint: settings.endpoint.clone(),
        })
    }

    /// The `tracing` layer that turns kubewire's spans into OpenTelemetry spans. It sees
    /// only kubewire's own spans (and the log events inside them, as span events).
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        let tracer = self.provider.tracer("kubewire");
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            // Nothing else reads the OpenTelemetry context: skip activating it on each enter.
            .with_context_activation(false)
            .with_filter(Targets::new().with_target("kubewire", tracing::Level::INFO))
    }

    /// The endpoint spans are exported to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Exports what is queued and stops the exporter (bounded by `timeout`).
    pub async fn shutdown(self, timeout: Duration) {
        let provider = self.provider;
        let done =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout)).await;
        match done {
            Ok(Ok(())) => tracing::debug!("traces flushed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "traces not fully flushed at shutdown"),
            Err(e) => tracing::warn!(error = %e, "trace shutdown panicked"),
        }
    }
}

/// Logs the exporter's failures once per change of state (down, then up again), not once per
/// batch; the span processor drops what it cannot queue.
#[derive(Debug)]
struct Reporting<E> {
    inner: E,
    endpoint: String,
    failing: AtomicBool,
}

impl<E: SpanExporter> SpanExporter for Reporting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let r = self.inner.export(batch).await;
        match &r {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "trace export recovered");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, spans = n,
                        "trace export failing; spans are dropped until the collector is back (events are not affected)");
                }
            }
        }
        r
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OpenTelemetry span context of `span`: invalid when the span is disabled (traces off).
pub fn span_context(span: &Span) -> SpanContext {
    if span.is_disabled() {
        return SpanContext::empty_context();
    }
    span.context().span().span_context().clone()
}

/// Starts the span of one event, which will be published: the root of a new trace, linked to
/// the list or watch span that carried the event (`carrier`, invalid when none). Returns the
/// span and the trace context the event carries: the span's own, or a random one when traces
/// are off (a consumer can still start its own trace from it).
pub fn event_span(event: &Event, carrier: &SpanContext) -> (Span, TraceContext) {
    let span = match event {
        Event::Object(c) => tracing::info_span!(
            target: TARGET,
            parent: None,
            "kubewire.event",
            otel.kind = "producer",
            cloudevents.event_id = %c.id(),
            cloudevents.event_type = envelope::object_type(c.change),
            k8s.cluster.name = %c.stream.cluster,
            k8s.namespace.name = c.object.namespace.as_deref().unwrap_or(""),
            kubewire.resource = %c.stream.resource.qualified_name(),
            kubewire.object.name = %c.object.name,
            kubewire.object.uid = %c.object.uid,
            kubewire.resource_version = %c.object.resource_version,
            kubewire.origin = c.origin.as_str(),
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        ),
        Event::Relisted(m) => tracing::info_span!(
            target: TARGET,
            parent: None,
            "kubewire.event",
            otel.kind = "producer",
            cloudevents.event_id = %m.id(),
            cloudevents.event_type = envelope::RELISTED_TYPE,
            k8s.cluster.name = %m.stream.cluster,
            k8s.namespace.name = m.stream.namespace.as_deref().unwrap_or(""),
            kubewire.resource = %m.stream.resource.qualified_name(),
            kubewire.resource_version = %m.to_resource_version,
            kubewire.origin = "relist",
            otel.status_code = tracing::field::Empty,
            otel.status_description = tracing::field::Empty,
        ),
    };
    if span.is_disabled() {
        return (span, TraceContext::random());
    }
    if carrier.is_valid() {
        span.add_link(carrier.clone());
    }
    let sc = span_context(&span);
    if !sc.is_valid() {
        // An OpenTelemetry-less subscriber enabled the span (never in kubewire's own setup).
        return (span, TraceContext::random());
    }
    let trace = TraceContext {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
    };
    (span, trace)
}

/// Marks `span` failed with `message` (its declared `otel.status_*` fields).
pub fn record_error(span: &Span, message: &dyn std::fmt::Display) {
    if span.is_disabled() {
        return;
    }
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", tracing::field::display(message));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(config: &OtlpConfig, vars: &[(&str, &str)]) -> Option<ExportSettings> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ExportSettings::resolve(config, |k| env.get(k).cloned())
    }

    #[test]
    fn traces_are_off_without_an_endpoint() {
        assert_eq!(settings(&OtlpConfig::default(), &[]), None);
        assert_eq!(
            settings(
                &OtlpConfig::default(),
                &[
                    ("OTEL_SERVICE_NAME", "x"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", " ")
                ]
            ),
            None
        );
    }

    #[test]
    fn endpoint_comes_from_config_then_traces_variable_then_generic_variable() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
        ];
        let s = settings(&OtlpConfig::default(), &env[..1]).unwrap();
        assert_eq!(s.endpoint, "http://generic:4317");
        let s = settings(&OtlpConfig::default(), &env).unwrap();
        assert_eq!(s.endpoint, "http://traces:4317");
        let config = OtlpConfig {
            endpoint: Some("http://file:4317".into()),
            ..Default::default()
        };
        let s = settings(&config, &env).unwrap();
        assert_eq!(s.endpoint, "http://file:4317");
        assert_eq!(s.service_name, "kubewire");
        assert_eq!(s.max_queue_size, 4096);
    }

    #[test]
    fn service_name_from_config_wins_over_the_variable() {
        let env = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SERVICE_NAME", "from-env"),
        ];
        assert_eq!(
            settings(&OtlpConfig::default(), &env).unwrap().service_name,
            "from-env"
        );
        let config = OtlpConfig {
            service_name: Some("from-file".into()),
            ..Default::default()
        };
        assert_eq!(settings(&config, &env).unwrap().service_name, "from-file");
    }

    #[test]
    fn sdk_disabled_or_exporter_none_turns_traces_off() {
        let config = OtlpConfig {
            endpoint: Some("http://c:4317".into()),
            ..Default::default()
        };
        assert!(settings(&config, &[]).is_some());
        assert_eq!(settings(&config, &[("OTEL_SDK_DISABLED", "true")]), None);
        assert_eq!(settings(&config, &[("OTEL_TRACES_EXPORTER", "none")]), None);
    }

    #[test]
    fn without_the_otel_layer_event_spans_are_disabled_and_traceparents_random_but_valid() {
        use crate::event::{Change, ChangeType, ObjectRef, Origin, StreamId};
        use std::sync::Arc;
        let stream = Arc::new(StreamId::test_configmaps());
        let event = Event::Object(Change {
            stream,
            change: ChangeType::Added,
            origin: Origin::Watch,
            object: ObjectRef {
                uid: "u".into(),
                namespace: Some("ns".into()),
                name: "n".into(),
                resource_version: "1".into(),
            },
            data: serde_json::json!({}),
            observed: chrono::Utc::now(),
            trace: TraceContext::random(),
        });
        // A log subscriber like main's, without the OpenTelemetry layer.
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
                "trace,{LOG_DIRECTIVE}"
            )))
            .with_writer(std::io::sink)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let (span, a) = event_span(&event, &SpanContext::empty_context());
            assert!(span.is_disabled());
            let (_, b) = event_span(&event, &SpanContext::empty_context());
            assert_ne!(a, b);
            assert_ne!(a.trace_id, [0; 16]);
            assert_ne!(a.span_id, [0; 8]);
        });
    }
}
