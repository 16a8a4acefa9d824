use super::*;

fn scope(ns: Option<&str>, list_version: &str) -> Scope {
    Scope {
        cluster: "c".into(),
        group: "core".into(),
        resource: "configmaps".into(),
        namespace: ns.map(Into::into),
        list_version: list_version.into(),
        checks: Checks::ALL,
    }
}

fn ev(ty: &str, name: &str, uid: &str, rv: &str) -> EventView {
    EventView {
        id: format!("c/{uid}/{rv}/{ty}"),
        ce_type: format!("io.kubewire.object.{ty}"),
        k8scluster: Some("c".into()),
        k8sgroup: Some("core".into()),
        k8sresource: Some("configmaps".into()),
        k8skind: Some("ConfigMap".into()),
        k8snamespace: Some("ns".into()),
        k8sname: Some(name.into()),
        k8suid: Some(uid.into()),
        k8sresourceversion: Some(rv.into()),
        kubewireorigin: Some("watch".into()),
        ..Default::default()
    }
}

/// A verifier over namespace `ns` listed at 100 with objects a@10 (uid ua) and b@20 (ub).
fn verifier() -> Verifier {
    let mut v = Verifier::new();
    let s = v.add_scope(scope(Some("ns"), "100")).unwrap();
    v.listed(s, Some("ns"), "a", "ua", "10");
    v.listed(s, Some("ns"), "b", "ub", "20");
    v
}

fn names(list: &[Finding]) -> Vec<&str> {
    list.iter().map(|f| f.name.as_str()).collect()
}

#[test]
fn a_stream_that_ends_at_the_cluster_state_is_clean() {
    let mut v = verifier();
    for e in [
        ev("added", "a", "ua", "5"),
        ev("modified", "a", "ua", "10"),
        ev("added", "b", "ub", "20"),
        ev("added", "gone", "ug", "30"),
        ev("deleted", "gone", "ug", "40"),
    ] {
        v.observe(&e);
    }
    let r = v.report("test");
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.counts.object_events, 5);
    assert_eq!(r.counts.cluster_objects, 2);
    assert_eq!(r.counts.downstream_objects, 3);
}

#[test]
fn missing_stale_and_ghosts_are_each_named() {
    let mut v = verifier();
    // a: never downstream → missing; b: at 15 → stale; g: alive, not in the cluster → ghost
    v.observe(&ev("added", "b", "ub", "15"));
    v.observe(&ev("added", "g", "ug", "50"));
    let r = v.report("test");
    assert_eq!(names(&r.missing), ["a"]);
    assert_eq!(names(&r.stale), ["b"]);
    assert_eq!(r.stale[0].downstream_version.as_deref(), Some("15"));
    assert_eq!(r.stale[0].cluster_version.as_deref(), Some("20"));
    assert_eq!(names(&r.ghosts), ["g"]);
    assert_eq!(r.totals.discrepancies(), 3);
    assert!(!r.is_clean());
}

#[test]
fn an_object_that_ends_deleted_downstream_but_exists_is_missing() {
    let mut v = verifier();
    v.observe(&ev("added", "a", "ua", "10"));
    v.observe(&ev("deleted", "a", "ua", "12"));
    v.observe(&ev("added", "b", "ub", "20"));
    let r = v.report("test");
    assert_eq!(names(&r.missing), ["a"]);
    assert!(
        r.missing[0].detail.contains("ends deleted"),
        "{:?}",
        r.missing
    );
}

#[test]
fn versions_newer_than_the_cluster_read_are_not_discrepancies() {
    // The stream is still being written: changes after the list (at 100).
    let mut v = verifier();
    v.observe(&ev("modified", "a", "ua", "101")); // changed after the list
    v.observe(&ev("added", "b", "ub", "20"));
    v.observe(&ev("deleted", "b", "ub", "102")); // deleted after the list
    v.observe(&ev("added", "new", "un", "103")); // created after the list
    let r = v.report("test");
    assert!(r.is_clean(), "{r:?}");
}

#[test]
fn a_replay_after_a_crash_is_a_duplicate_and_a_regression_is_an_order_violation() {
    let mut v = verifier();
    for rv in ["5", "7", "10", "7", "10"] {
        v.observe(&ev("modified", "a", "ua", rv));
    }
    v.observe(&ev("added", "b", "ub", "20"));
    let r = v.report("test");
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.counts.duplicates, 2);

    let mut v = verifier();
    for rv in ["5", "10", "8"] {
        v.observe(&ev("modified", "a", "ua", rv));
    }
    v.observe(&ev("modified", "a", "ua", "10"));
    v.observe(&ev("added", "b", "ub", "20"));
    let r = v.report("test");
    assert_eq!(names(&r.order_violations), ["a"]);
    assert_eq!(r.totals.order_violations, 1);
    assert!(
        r.order_violations[0].detail.contains("8 after 10"),
        "{:?}",
        r.order_violations
    );
}

#[test]
fn a_relist_delete_may_carry_the_last_version() {
    let mut v = verifier();
    v.observe(&ev("added", "a", "ua", "10"));
    v.observe(&ev("added", "b", "ub", "20"));
    v.observe(&ev("added", "x", "ux", "30"));
    let mut d = ev("deleted", "x", "ux", "30");
    d.kubewireorigin = Some("relist".into());
    v.observe(&d);
    assert!(v.report("t").is_clean());
    // ... but a watch delete at the same version goes back in history
    let mut v = verifier();
    v.observe(&ev("added", "x", "ux", "30"));
    v.observe(&ev("deleted", "x", "ux", "30"));
    assert_eq!(v.report("t").totals.order_violations, 1);
}

#[test]
fn a_name_replaced_without_a_delete_leaves_a_ghost_of_the_old_uid() {
    let mut v = verifier();
    v.observe(&ev("added", "a", "old", "3"));
    v.observe(&ev("added", "a", "ua", "10"));
    v.observe(&ev("added", "b", "ub", "20"));
    let r = v.report("t");
    assert_eq!(names(&r.ghosts), ["a"]);
    assert_eq!(r.ghosts[0].uid.as_deref(), Some("old"));
    // a late delete of the old uid accounts for it
    v.observe(&ev("deleted", "a", "old", "4"));
    assert!(v.report("t").is_clean());
}

#[test]
fn relist_markers_are_reported_and_oversize_events_count_as_their_change() {
    let mut v = verifier();
    let marker = EventView {
        id: "c/relist/x/90".into(),
        ce_type: "io.kubewire.stream.relisted".into(),
        k8scluster: Some("c".into()),
        k8sgroup: Some("core".into()),
        k8sresource: Some("configmaps".into()),
        k8snamespace: Some("ns".into()),
        data: Some(
            serde_json::json!({"fromResourceVersion": "50", "toResourceVersion": "90",
            "added": 1, "modified": 0, "deleted": 2, "unchanged": 3}),
        ),
        ..Default::default()
    };
    v.observe(&marker);
    v.observe(&ev("added", "a", "ua", "10"));
    let mut big = ev("oversize", "b", "ub", "20");
    big.data = Some(serde_json::json!({"originalType": "io.kubewire.object.added"}));
    v.observe(&big);
    let r = v.report("t");
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.counts.relist_markers, 1);
    assert_eq!(r.relists[0].to_resource_version.as_deref(), Some("90"));
    assert_eq!(r.relists[0].deleted, 2);
}

#[test]
fn events_outside_the_scopes_and_foreign_documents_are_counted_not_judged() {
    let mut v = verifier();
    v.observe(&ev("added", "a", "ua", "10"));
    v.observe(&ev("added", "b", "ub", "20"));
    let mut other_ns = ev("added", "z", "uz", "1");
    other_ns.k8snamespace = Some("elsewhere".into());
    v.observe(&other_ns);
    let mut other_cluster = ev("added", "z", "uz", "1");
    other_cluster.k8scluster = Some("d".into());
    v.observe(&other_cluster);
    v.observe(&EventView {
        ce_type: "com.example.thing".into(),
        ..Default::default()
    });
    v.unparsable();
    v.tombstone();
    let r = v.report("t");
    assert!(r.is_clean(), "{r:?}");
    assert_eq!(r.counts.out_of_scope, 2);
    assert_eq!(r.counts.foreign, 1);
    assert_eq!(r.counts.unparsable, 1);
    assert_eq!(r.counts.tombstones, 1);
    assert_eq!(r.counts.records, 7);
}

#[test]
fn checks_a_resource_cannot_support_are_off() {
    let mut v = Verifier::new();
    let s = v
        .add_scope(Scope {
            checks: Checks {
                missing: false,
                stale: true,
                ghosts: false,
            },
            ..scope(None, "100")
        })
        .unwrap();
    v.listed(s, Some("ns"), "a", "ua", "10");
    v.observe(&ev("added", "g", "ug", "5"));
    assert!(v.report("t").is_clean());
    assert!(v.add_scope(scope(None, "100")).is_err());
}

#[test]
fn an_all_namespaces_scope_takes_every_namespace_and_cluster_scoped_objects() {
    let mut v = Verifier::new();
    let s = v.add_scope(scope(None, "100")).unwrap();
    v.listed(s, None, "n1", "u1", "10");
    let mut e = ev("added", "n1", "u1", "10");
    e.k8snamespace = None;
    v.observe(&e);
    let r = v.report("t");
    assert!(r.is_clean(), "{r:?}");
}

#[test]
fn memory_is_one_entry_per_object_however_long_the_stream() {
    let mut v = verifier();
    for rv in 1..=10 {
        v.observe(&ev("modified", "a", "ua", &rv.to_string()));
    }
    v.observe(&ev("added", "b", "ub", "20"));
    assert_eq!(v.objects.len(), 2);
    let seen = v.objects.values().filter_map(|e| e.seen.as_ref());
    assert!(seen.clone().all(|s| s.recent.len() <= RECENT));
    assert!(v.report("t").is_clean());
}

#[test]
fn the_summary_names_each_finding_and_the_result() {
    let mut v = verifier();
    v.observe(&ev("added", "b", "ub", "15"));
    let text = render_text(&v.report("file x"), 20);
    assert!(text.contains("source: file x"), "{text}");
    assert!(
        text.contains("missing: 1\n  c/core/configmaps/ns/a (uid ua): no event downstream"),
        "{text}"
    );
    assert!(
        text.contains("stale: 1\n  c/core/configmaps/ns/b"),
        "{text}"
    );
    assert!(text.ends_with("result: 2 discrepancies\n"), "{text}");
    let text = render_text(&v.report("file x"), 0);
    assert!(text.contains("... 1 more"), "{text}");
}
