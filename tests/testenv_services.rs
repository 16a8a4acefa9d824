//! Issue 2, "Done when": the services `dev/testenv up` starts are real and reachable through the
//! environment, a watch from a compacted resourceVersion gets 410 Gone, and ServiceAccount
//! tokens from the TokenRequest API authenticate while RBAC denies what was not granted.
//!
//! These tests share the running services; each uses its own uniquely named objects, topics and
//! streams. Stop/start tests live in `testenv_restart.rs` (a separate binary: `cargo test` runs
//! test binaries one after another, so they never overlap with these).

mod common;

use std::time::Duration;

use common::{
    eventually, kafka_brokers, kube_client, kube_client_with_token, nats_url, testenv, unique_name,
    within,
};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::authentication::v1::{SelfSubjectReview, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;

fn configmap(name: &str, value: &str) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "data": { "value": value },
    }))
    .unwrap()
}

#[tokio::test]
async fn kube_apiserver_lists_namespaces() {
    let client = kube_client().await;
    let namespaces: Api<Namespace> = Api::all(client);
    let list = within(
        30,
        "list namespaces",
        namespaces.list(&ListParams::default()),
    )
    .await
    .expect("list namespaces");
    let names: Vec<_> = list
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    for expected in ["default", "kube-system"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

#[tokio::test]
async fn kafka_produces_and_consumes_a_message() {
    let topic = unique_name("testenv");
    let brokers = kafka_brokers();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("kafka admin client");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let created = within(
        30,
        "create topic",
        admin.create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &opts,
        ),
    )
    .await
    .expect("create_topics request");
    assert!(
        created.iter().all(|r| r.is_ok()),
        "create topic {topic}: {created:?}"
    );

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("message.timeout.ms", "20000")
        .create()
        .expect("kafka producer");
    let delivery = within(
        30,
        "produce",
        producer.send(
            FutureRecord::to(&topic).key("k1").payload("hello kafka"),
            Duration::from_secs(20),
        ),
    )
    .await
    .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    assert_eq!((delivery.partition, delivery.offset), (0, 0));

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", unique_name("testenv-group"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("kafka consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let msg = within(30, "consume", consumer.recv())
        .await
        .expect("consume");
    assert_eq!(msg.key(), Some(&b"k1"[..]));
    assert_eq!(msg.payload(), Some(&b"hello kafka"[..]));
    assert_eq!(msg.offset(), 0);
}

#[tokio::test]
async fn jetstream_publish_is_acknowledged() {
    let client = within(30, "connect to nats", async_nats::connect(nats_url()))
        .await
        .expect("connect to nats");
    let js = async_nats::jetstream::new(client);
    let stream = unique_name("TESTENV");
    let subject = format!("{stream}.events");
    within(
        30,
        "create stream",
        js.create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{stream}.>")],
            ..Default::default()
        }),
    )
    .await
    .expect("create stream");

    let ack_future = within(
        30,
        "publish",
        js.publish(subject.clone(), "hello nats".into()),
    )
    .await
    .expect("publish");
    let ack = within(30, "publish ack", ack_future)
        .await
        .expect("publish ack");
    assert_eq!(ack.stream, stream);
    assert_eq!(ack.sequence, 1);
    assert!(!ack.duplicate);

    let stored = within(30, "read back", async {
        js.get_stream(&stream)
            .await
            .expect("get stream")
            .get_raw_message(1)
            .await
    })
    .await
    .expect("stored message");
    assert_eq!(&stored.payload[..], b"hello nats");
    assert_eq!(stored.subject.as_str(), subject);
    within(30, "delete stream", js.delete_stream(&stream))
        .await
        .expect("delete stream");
}

/// With `--watch-cache=false`, watches are served from etcd: after `dev/testenv compact`, a watch
/// from a resourceVersion older than the compaction gets 410 Gone.
#[tokio::test]
async fn watch_from_compacted_resource_version_gets_410_gone() {
    let client = kube_client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let name = unique_name("testenv-compact");
    let created = within(
        30,
        "create",
        cms.create(&PostParams::default(), &configmap(&name, "1")),
    )
    .await
    .expect("create configmap");
    let old_rv = created.metadata.resource_version.clone().unwrap();
    let mut updated = created.clone();
    updated.data = Some([("value".to_string(), "2".to_string())].into());
    let updated = within(
        30,
        "update",
        cms.replace(&name, &PostParams::default(), &updated),
    )
    .await
    .expect("update configmap");
    let new_rv = updated.metadata.resource_version.clone().unwrap();
    let wp = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(20);

    // Control: before compaction the same watch replays the update.
    let mut watch = within(30, "watch", cms.watch(&wp, &old_rv))
        .await
        .expect("watch")
        .boxed();
    match within(30, "first event", watch.try_next()).await {
        Ok(Some(WatchEvent::Modified(cm))) => {
            assert_eq!(cm.metadata.resource_version, Some(new_rv.clone()))
        }
        other => panic!("expected the update replayed from {old_rv}, got {other:?}"),
    }
    drop(watch);

    let compacted_at: u64 = testenv(&["compact"])
        .trim()
        .parse()
        .expect("compact prints the revision");
    assert!(compacted_at > old_rv.parse::<u64>().unwrap());

    let mut watch = within(30, "watch", cms.watch(&wp, &old_rv))
        .await
        .expect("watch")
        .boxed();
    let (code, status) = match within(30, "first event after compaction", watch.next()).await {
        Some(Ok(WatchEvent::Error(status))) => (status.code, status),
        Some(Err(kube::Error::Api(status))) => (status.code, status),
        other => panic!("expected 410 Gone from a compacted resourceVersion, got {other:?}"),
    };
    assert_eq!(code, 410, "{status:?}");
    drop(watch);

    // A watch from the current resourceVersion — the revision `compact` compacted at — is not
    // "older": it keeps working after the compaction (regression: compacting at the object's
    // own last revision gave 500 PrevKv=nil). Not the update's own version: the API servers
    // write (their leases) between it and the compaction, and those revisions are gone.
    let mut watch = within(30, "watch", cms.watch(&wp, &compacted_at.to_string()))
        .await
        .expect("watch")
        .boxed();
    let mut again = updated.clone();
    again.data = Some([("value".to_string(), "3".to_string())].into());
    within(
        30,
        "update",
        cms.replace(&name, &PostParams::default(), &again),
    )
    .await
    .expect("update configmap");
    match within(30, "event after compaction", watch.try_next()).await {
        Ok(Some(WatchEvent::Modified(cm))) => {
            assert_eq!(cm.data.unwrap()["value"], "3");
        }
        other => panic!("expected the new update from the current resourceVersion, got {other:?}"),
    }
    within(30, "delete", cms.delete(&name, &DeleteParams::default()))
        .await
        .expect("delete");
}

/// A ServiceAccount token from the TokenRequest API authenticates as that ServiceAccount; RBAC
/// lets it do exactly what a Role grants and denies (403) everything else.
#[tokio::test]
async fn service_account_token_authenticates_and_rbac_denies_what_was_not_granted() {
    let admin = kube_client().await;
    let ns = "default";
    let sa_name = unique_name("testenv-sa");
    let allowed_cm = unique_name("testenv-allowed");
    let other_cm = unique_name("testenv-other");
    let pp = PostParams::default();

    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
    let cms: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
    let sa: ServiceAccount =
        serde_json::from_value(json!({ "metadata": { "name": sa_name } })).unwrap();
    within(30, "create sa", sas.create(&pp, &sa))
        .await
        .expect("create serviceaccount");
    for cm in [&allowed_cm, &other_cm] {
        within(30, "create cm", cms.create(&pp, &configmap(cm, "x")))
            .await
            .expect("create configmap");
    }

    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(600),
            ..Default::default()
        },
        ..Default::default()
    };
    let minted = within(
        30,
        "token request",
        sas.create_token_request(&sa_name, &pp, &request),
    )
    .await
    .expect("TokenRequest");
    let token = minted.status.expect("token status").token;
    assert!(!token.is_empty());
    let sa_client = kube_client_with_token(&token).await;

    // Authenticates: the server says who the token is.
    let reviews: Api<SelfSubjectReview> = Api::all(sa_client.clone());
    let review = within(
        30,
        "selfsubjectreview",
        reviews.create(&pp, &SelfSubjectReview::default()),
    )
    .await
    .expect("SelfSubjectReview with the ServiceAccount token");
    let username = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username);
    assert_eq!(
        username,
        Some(format!("system:serviceaccount:{ns}:{sa_name}"))
    );

    // Nothing granted yet: denied.
    let sa_cms: Api<ConfigMap> = Api::namespaced(sa_client.clone(), ns);
    assert_forbidden(
        within(30, "get before grant", sa_cms.get(&allowed_cm)).await,
        "get before the grant",
    );

    // Grant `get` on one ConfigMap.
    let role: Role = serde_json::from_value(json!({
        "metadata": { "name": sa_name },
        "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": [allowed_cm] }],
    }))
    .unwrap();
    let binding: RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": sa_name },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa_name },
        "subjects": [{ "kind": "ServiceAccount", "name": sa_name, "namespace": ns }],
    }))
    .unwrap();
    let roles: Api<Role> = Api::namespaced(admin.clone(), ns);
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), ns);
    within(30, "create role", roles.create(&pp, &role))
        .await
        .expect("create role");
    within(30, "create binding", bindings.create(&pp, &binding))
        .await
        .expect("create rolebinding");

    // The RBAC authorizer sees the new binding through its informer: poll until it applies.
    let got = eventually(30, "granted get succeeds", || async {
        within(30, "get granted", sa_cms.get(&allowed_cm))
            .await
            .ok()
    })
    .await;
    assert_eq!(got.metadata.name.as_deref(), Some(allowed_cm.as_str()));

    // Everything else stays denied.
    assert_forbidden(
        within(30, "get other", sa_cms.get(&other_cm)).await,
        "get of a ConfigMap not named in the Role",
    );
    assert_forbidden(
        within(30, "list", sa_cms.list(&ListParams::default()))
            .await
            .map(|_| ()),
        "list of ConfigMaps",
    );
    let sa_secrets: Api<Secret> = Api::namespaced(sa_client.clone(), ns);
    assert_forbidden(
        within(30, "list secrets", sa_secrets.list(&ListParams::default()))
            .await
            .map(|_| ()),
        "list of Secrets",
    );
    let sa_system_cms: Api<ConfigMap> = Api::namespaced(sa_client, "kube-system");
    assert_forbidden(
        within(30, "get in kube-system", sa_system_cms.get(&allowed_cm)).await,
        "get in another namespace",
    );

    let dp = DeleteParams::default();
    within(30, "cleanup", async {
        bindings
            .delete(&sa_name, &dp)
            .await
            .expect("delete rolebinding");
        roles.delete(&sa_name, &dp).await.expect("delete role");
        sas.delete(&sa_name, &dp)
            .await
            .expect("delete serviceaccount");
        for cm in [&allowed_cm, &other_cm] {
            cms.delete(cm, &dp).await.expect("delete configmap");
        }
    })
    .await;
}

fn assert_forbidden<T: std::fmt::Debug>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(status)) if status.code == 403 => {}
        other => panic!("{what}: expected 403 Forbidden, got {other:?}"),
    }
}
