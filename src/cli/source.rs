//! Which published stream `verify` and `tail` read: given by flags, else the configuration's
//! sink read back (the file, the topic or topics its template can produce, the JetStream
//! stream and the subjects of its template).

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::config::Config;
use crate::consume::Source;
use crate::envelope::template::{Placeholder, Segment, Template};
use crate::sink::SinkConfig;

/// Where the stream is; without any of these, the configuration's sink.
#[derive(Debug, Clone, Default, Args)]
pub struct SourceArgs {
    /// Read a file sink's output (JSON lines).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["topic", "stream"])]
    pub file: Option<PathBuf>,
    /// Read a Kafka topic, or every topic matching a pattern (`*`, `?`), e.g.
    /// 'kubewire.*'. Brokers and security: the configuration's Kafka sink, or --brokers.
    #[arg(long, value_name = "TOPIC", conflicts_with = "stream")]
    pub topic: Option<String>,
    /// Kafka bootstrap servers (host:port,...), instead of the configuration's.
    #[arg(long, value_name = "BROKERS")]
    pub brokers: Option<String>,
    /// Read a NATS JetStream stream. URL, auth and TLS: the configuration's NATS sink, or
    /// --nats-url.
    #[arg(long, value_name = "NAME")]
    pub stream: Option<String>,
    /// With a NATS stream: only the subjects matching this filter (`*`, `>`).
    #[arg(long, value_name = "FILTER")]
    pub subject: Option<String>,
    /// NATS server URL, instead of the configuration's.
    #[arg(long, value_name = "URL")]
    pub nats_url: Option<String>,
}

impl SourceArgs {
    /// Whether any flag names a source (then no configuration file is needed).
    pub fn given(&self) -> bool {
        self.file.is_some() || self.topic.is_some() || self.stream.is_some()
    }
}

/// The source the flags and the configuration's sink name (pure).
pub fn resolve(args: &SourceArgs, sink: &SinkConfig) -> Result<Source, CliError> {
    let usage = |m: String| CliError::Usage(m);
    if let Some(path) = &args.file {
        return Ok(Source::File(path.clone()));
    }
    if let Some(topic) = &args.topic {
        let mut settings = match sink {
            SinkConfig::Kafka(k) => k.clone(),
            _ => Default::default(),
        };
        if let Some(b) = &args.brokers {
            settings.brokers = b.clone();
        }
        if settings.brokers.trim().is_empty() {
            return Err(usage(
                "--topic needs --brokers (the configuration's sink is not kafka)".into(),
            ));
        }
        return Ok(Source::Kafka {
            settings,
            topics: topic.clone(),
        });
    }
    if let Some(stream) = &args.stream {
        let mut settings = match sink {
            SinkConfig::Nats(n) => n.clone(),
            _ => Default::default(),
        };
        if let Some(u) = &args.nats_url {
            settings.url = u.clone();
        }
        if settings.url.trim().is_empty() {
            return Err(usage(
                "--stream needs --nats-url (the configuration's sink is not nats)".into(),
            ));
        }
        return Ok(Source::Nats {
            settings,
            stream: stream.clone(),
            subject: args.subject.clone(),
        });
    }
    match sink {
        SinkConfig::File { path } => Ok(Source::File(path.clone())),
        SinkConfig::Kafka(k) => {
            let mut settings = k.clone();
            if let Some(b) = &args.brokers {
                settings.brokers = b.clone();
            }
            Ok(Source::Kafka {
                topics: topic_pattern(&k.topic)?,
                settings,
            })
        }
        SinkConfig::Nats(n) => {
            let mut settings = n.clone();
            if let Some(u) = &args.nats_url {
                settings.url = u.clone();
            }
            let template = crate::sink::nats::subject::SubjectTemplate::parse(&n.subject)
                .map_err(|e| usage(format!("sink.subject: {e}")))?;
            Ok(Source::Nats {
                stream: n.stream.name.clone(),
                subject: Some(args.subject.clone().unwrap_or_else(|| template.wildcard())),
                settings,
            })
        }
        SinkConfig::Stdout { .. } => Err(usage(
            "the configured sink is stdout, which cannot be read back: give --file, --topic or --stream"
                .into(),
        )),
    }
}

/// A topic template as a pattern over the topics it can produce: each placeholder becomes
/// `*` (`kubewire.{cluster}.{resource}` → `kubewire.*.*`).
pub fn topic_pattern(template: &str) -> Result<String, CliError> {
    let t = Template::parse(template, Placeholder::STREAM)
        .map_err(|e| CliError::Usage(format!("sink.topic {template:?}: {e}")))?;
    Ok(t.segments()
        .map(|s| match s {
            Segment::Literal(l) => l.to_owned(),
            Segment::Var(_) => "*".to_owned(),
        })
        .collect())
}

/// The configuration for a command that can do without one when the source is given.
pub fn config_for(global: &super::Global, args: &SourceArgs) -> Result<Config, CliError> {
    match super::load(global) {
        Ok(l) => Ok(l.config),
        Err(_) if args.given() && !explicit(global) => Ok(Config::default()),
        Err(e) => Err(e),
    }
}

fn explicit(global: &super::Global) -> bool {
    global.config.is_some() || std::env::var("KUBEWIRE_CONFIG").is_ok_and(|v| !v.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{KafkaSinkConfig, NatsSinkConfig, StdoutFormat};

    #[test]
    fn flags_name_the_source_and_the_sink_fills_in_its_connection() {
        let kafka = SinkConfig::Kafka(KafkaSinkConfig {
            brokers: "k:9092".into(),
            topic: "kubewire.{cluster}.{resource}".into(),
            ..Default::default()
        });
        let args = SourceArgs {
            topic: Some("mine".into()),
            ..Default::default()
        };
        match resolve(&args, &kafka).unwrap() {
            Source::Kafka { settings, topics } => {
                assert_eq!(
                    (settings.brokers.as_str(), topics.as_str()),
                    ("k:9092", "mine")
                )
            }
            other => panic!("{other:?}"),
        }
        match resolve(&SourceArgs::default(), &kafka).unwrap() {
            Source::Kafka { topics, .. } => assert_eq!(topics, "kubewire.*.*"),
            other => panic!("{other:?}"),
        }
        let stdout = SinkConfig::Stdout {
            format: StdoutFormat::Json,
        };
        assert!(matches!(resolve(&args, &stdout), Err(CliError::Usage(_))));
        assert!(matches!(
            resolve(&SourceArgs::default(), &stdout),
            Err(CliError::Usage(_))
        ));
        let nats = SinkConfig::Nats(NatsSinkConfig {
            url: "nats://n:4222".into(),
            ..Default::default()
        });
        match resolve(&SourceArgs::default(), &nats).unwrap() {
            Source::Nats {
                stream, subject, ..
            } => {
                assert_eq!(stream, "KUBEWIRE");
                assert_eq!(subject.as_deref(), Some("kubewire.*.*.*.*.*"));
            }
            other => panic!("{other:?}"),
        }
        let file = SourceArgs {
            file: Some("e.jsonl".into()),
            ..Default::default()
        };
        assert!(matches!(resolve(&file, &nats).unwrap(), Source::File(_)));
    }
}
