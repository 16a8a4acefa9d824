//! Issue 2, "Done when": `dev/testenv stop|start <service>` works for each service and its data
//! survives — an object stored through the API server (stop/start of etcd, then of the API
//! server), a Kafka topic's messages, a JetStream stream's messages.
//!
//! A separate test binary on purpose: stopping a service would break tests that use it at the same
//! time. `cargo test` runs test binaries one after another, and inside this binary the tests take
//! `SERIAL` so they run one at a time too. A guard restarts the service if a test fails midway.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::{
    eventually, kafka_brokers, kube_client, nats_url, service_state, testenv, unique_name, within,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, PostParams};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;

/// One restart test at a time within this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Starts the service again on drop if a failed test left it stopped.
struct Restore(&'static str);
impl Drop for Restore {
    fn drop(&mut self) {
        // `start` is a no-op for a running service; never panic in drop.
        let _ = std::process::Command::new(common::repo_root().join("dev/testenv"))
            .args(["start", self.0])
            .output();
    }
}

/// Stops `service` and checks that it really is down: `status` says so and its port is closed.
fn stop(service: &'static str, addr: &str) -> Restore {
    let guard = Restore(service);
    testenv(&["stop", service]);
    assert_eq!(
        service_state(service),
        "down",
        "{service} after dev/testenv stop"
    );
    assert!(
        TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2)).is_err(),
        "{service} still accepts connections on {addr} after dev/testenv stop"
    );
    guard
}

fn start(service: &str) {
    testenv(&["start", service]);
    assert_eq!(
        service_state(service),
        "up",
        "{service} after dev/testenv start"
    );
}

fn apiserver_addr() -> String {
    common::var("TESTENV_APISERVER_URL")
        .trim_start_matches("https://")
        .to_string()
}

async fn create_configmap(value: &str) -> (Api<ConfigMap>, String) {
    create_configmap_with(kube_client().await, value).await
}

async fn create_configmap_with(client: kube::Client, value: &str) -> (Api<ConfigMap>, String) {
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let name = unique_name("testenv-restart");
    let cm: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": name }, "data": { "value": value } }))
            .unwrap();
    within(
        30,
        "create configmap",
        cms.create(&PostParams::default(), &cm),
    )
    .await
    .expect("create configmap");
    (cms, name)
}

/// Reads the ConfigMap back through a fresh client, retrying until the API server answers.
async fn assert_configmap_survived(name: &str, value: &str) {
    assert_configmap_survived_on(kube_client().await, name, value).await
}

async fn assert_configmap_survived_on(client: kube::Client, name: &str, value: &str) {
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm = eventually(60, "configmap readable again", || async {
        within(10, "get configmap", cms.get(name)).await.ok()
    })
    .await;
    assert_eq!(cm.data.unwrap()["value"], value);
    within(30, "delete", cms.delete(name, &DeleteParams::default()))
        .await
        .expect("delete configmap");
}

#[tokio::test]
async fn etcd_stop_start_keeps_api_objects() {
    let _serial = SERIAL.lock().await;
    let (_, name) = create_configmap("kept-by-etcd").await;
    let etcd_addr = common::var("ETCDCTL_ENDPOINTS")
        .trim_start_matches("http://")
        .to_string();
    let _restore = stop("etcd", &etcd_addr);
    start("etcd");
    assert_configmap_survived(&name, "kept-by-etcd").await;
}

#[tokio::test]
async fn apiserver_stop_start_keeps_api_objects() {
    let _serial = SERIAL.lock().await;
    let (cms, name) = create_configmap("kept-across-apiserver-restart").await;
    let _restore = stop("apiserver", &apiserver_addr());
    let down = within(30, "get while stopped", cms.get(&name)).await;
    assert!(
        down.is_err(),
        "the API server answered while stopped: {down:?}"
    );
    start("apiserver");
    assert_configmap_survived(&name, "kept-across-apiserver-restart").await;
}

#[tokio::test]
async fn kafka_stop_start_keeps_topic_messages() {
    let _serial = SERIAL.lock().await;
    let brokers = kafka_brokers();
    let topic = unique_name("testenv-restart");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("kafka admin");
    let created = within(
        30,
        "create topic",
        admin.create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        ),
    )
    .await
    .expect("create_topics");
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    drop(admin);

    let sent: Vec<String> = (0..3).map(|i| format!("message {i}")).collect();
    {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("acks", "all")
            .create()
            .expect("kafka producer");
        for payload in &sent {
            within(
                30,
                "produce",
                producer.send(
                    FutureRecord::to(&topic).key("k").payload(payload),
                    Duration::from_secs(20),
                ),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        }
    }

    let _restore = stop("kafka", &brokers);
    start("kafka");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique_name("testenv-restart"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let mut received = Vec::new();
    while received.len() < sent.len() {
        let msg = within(60, "consume after restart", consumer.recv())
            .await
            .expect("consume");
        received.push(String::from_utf8(msg.payload().unwrap().to_vec()).unwrap());
    }
    assert_eq!(received, sent);
}

#[tokio::test]
async fn nats_stop_start_keeps_jetstream_messages() {
    let _serial = SERIAL.lock().await;
    let stream_name = unique_name("TESTENV_RESTART");
    let subject = format!("{stream_name}.events");
    let sent: Vec<String> = (0..3).map(|i| format!("message {i}")).collect();
    {
        let client = within(30, "connect", async_nats::connect(nats_url()))
            .await
            .expect("connect");
        let js = async_nats::jetstream::new(client);
        within(
            30,
            "create stream",
            js.create_stream(async_nats::jetstream::stream::Config {
                name: stream_name.clone(),
                subjects: vec![format!("{stream_name}.>")],
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            }),
        )
        .await
        .expect("create stream");
        for payload in &sent {
            let ack = within(
                30,
                "publish",
                js.publish(subject.clone(), payload.clone().into()),
            )
            .await
            .expect("publish");
            within(30, "ack", ack).await.expect("ack");
        }
    }

    let nats_addr = nats_url().trim_start_matches("nats://").to_string();
    let _restore = stop("nats", &nats_addr);
    start("nats");

    let client = within(30, "connect after restart", async_nats::connect(nats_url()))
        .await
        .expect("connect after restart");
    let js = async_nats::jetstream::new(client);
    let mut stream = within(30, "get stream", js.get_stream(&stream_name))
        .await
        .expect("stream survived");
    let info = within(30, "stream info", stream.info())
        .await
        .expect("stream info");
    assert_eq!(info.state.messages, sent.len() as u64);
    for (i, payload) in sent.iter().enumerate() {
        let msg = within(30, "get message", stream.get_raw_message(i as u64 + 1))
            .await
            .expect("stored message");
        assert_eq!(&msg.payload[..], payload.as_bytes());
    }
    within(30, "delete stream", js.delete_stream(&stream_name))
        .await
        .expect("delete stream");
}

/// The realistic server and its own etcd stop and start like the others, keeping their data.
#[tokio::test]
async fn realistic_apiserver_and_its_etcd_stop_start_keep_api_objects() {
    let _serial = SERIAL.lock().await;
    let (_, name) = create_configmap_with(common::kube_client_real().await, "real").await;
    let etcd_addr = common::var("TESTENV_ETCD_REAL_ENDPOINTS")
        .trim_start_matches("http://")
        .to_string();
    let apiserver_addr = common::var("TESTENV_APISERVER_REAL_URL")
        .trim_start_matches("https://")
        .to_string();
    {
        let _restore = stop("etcd-real", &etcd_addr);
        start("etcd-real");
    }
    {
        let _restore = stop("apiserver-real", &apiserver_addr);
        start("apiserver-real");
    }
    assert_configmap_survived_on(common::kube_client_real().await, &name, "real").await;
}
