//! Several clusters in one process: two real kube-apiservers (`dev/testenv up --clusters 2`),
//! one kubewire, every event tagged with its cluster.

mod common;
mod harness;

use harness::{Scene, change, configmap, create_namespace};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};

async fn second_cluster() -> kube::Client {
    let path = common::env()
        .get("KUBECONFIG_2")
        .cloned()
        .unwrap_or_else(|| {
            panic!("KUBECONFIG_2 is not set: run dev/testenv up --clusters 2 (tests never skip)")
        });
    let kc = Kubeconfig::read_from(&path).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test]
async fn two_clusters_stream_into_one_sink_each_event_tagged_with_its_cluster() {
    let s = Scene::new("kw-multi").await;
    let (one, ns) = (&s.client, &s.ns);
    let two = second_cluster().await;
    create_namespace(&two, ns).await;
    let kw = s
        .kubewire().watch("configmaps", &[ns]).extra_yaml(&format!(
            "clusters:\n  - name: east\n    kubeconfig: {}\n  - name: west\n    kubeconfig: {}\n    qps: 5\n    burst: 5\n",
            common::var("KUBECONFIG"),
            common::env()["KUBECONFIG_2"],
        )).start();
    kw.ready_streams(60, 2).await;
    let pp = PostParams::default();
    let a = Api::<ConfigMap>::namespaced(one.clone(), ns)
        .create(&pp, &configmap("same-name", &[], "east"))
        .await
        .unwrap();
    let b = Api::<ConfigMap>::namespaced(two.clone(), ns)
        .create(&pp, &configmap("same-name", &[], "west"))
        .await
        .unwrap();
    let events = kw
        .wait_events(60, "one event per cluster", |ev| ev.len() >= 2)
        .await;
    assert_eq!(events.len(), 2, "{events:#?}");
    let of = |cluster: &str| {
        events
            .iter()
            .find(|e| e["k8scluster"] == cluster)
            .unwrap_or_else(|| panic!("no event from {cluster}: {events:#?}"))
    };
    let (east, west) = (of("east"), of("west"));
    assert_eq!((change(east), change(west)), ("added", "added"));
    assert_eq!(east["source"], "kubewire/east");
    assert_eq!(west["source"], "kubewire/west");
    assert_eq!(east["data"]["data"]["value"], "east");
    assert_eq!(west["data"]["data"]["value"], "west");
    assert_eq!(east["k8suid"], a.metadata.uid.unwrap().as_str());
    assert_eq!(west["k8suid"], b.metadata.uid.unwrap().as_str());
    assert!(east["id"].as_str().unwrap().starts_with("east/"));
    assert!(west["id"].as_str().unwrap().starts_with("west/"));
}
