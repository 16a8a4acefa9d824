//! The human summary of a [`Report`] (pure); `-o json` is the report serialized.

use std::fmt::Write as _;

use super::{Finding, Report};

/// The summary `kubewire verify` prints: what was read and listed, each kind of finding with
/// at most `limit` objects named, the relist markers, and the result line.
pub fn render_text(r: &Report, limit: usize) -> String {
    let mut out = String::new();
    let c = &r.counts;
    let _ = writeln!(out, "source: {}", r.source);
    let _ = writeln!(
        out,
        "read: {} records, {} object events ({} duplicates), {} relist markers, {} tombstones, {} unparsable, {} out of scope",
        c.records,
        c.object_events,
        c.duplicates,
        c.relist_markers,
        c.tombstones,
        c.unparsable,
        c.out_of_scope
    );
    let _ = writeln!(
        out,
        "cluster: {} objects in {} scopes; downstream: {} objects",
        c.cluster_objects,
        r.scopes.len(),
        c.downstream_objects
    );
    for s in &r.scopes {
        let _ = write!(out, "  {s} at resourceVersion {}", s.list_version);
        let mut off = Vec::new();
        if !s.checks.missing {
            off.push("missing (initial: false)");
        }
        if !s.checks.stale {
            off.push("stale (modified not published)");
        }
        if !s.checks.ghosts {
            off.push("ghosts (deleted not published)");
        }
        if !off.is_empty() {
            let _ = write!(out, " — not checked: {}", off.join(", "));
        }
        out.push('\n');
    }
    let t = &r.totals;
    for (title, total, list) in [
        ("missing", t.missing, &r.missing),
        ("stale", t.stale, &r.stale),
        ("ghosts", t.ghosts, &r.ghosts),
        ("order violations", t.order_violations, &r.order_violations),
    ] {
        let _ = writeln!(out, "{title}: {total}");
        section(&mut out, list, total, limit);
    }
    let _ = writeln!(out, "relist markers: {}", r.counts.relist_markers);
    for m in r.relists.iter().take(limit) {
        let _ = writeln!(
            out,
            "  {}/{}/{} in {}: history compressed from {} to {} (+{} ~{} -{} ={})",
            m.cluster,
            m.group,
            m.resource,
            m.namespace.as_deref().unwrap_or("all namespaces"),
            m.from_resource_version.as_deref().unwrap_or("(none)"),
            m.to_resource_version.as_deref().unwrap_or("?"),
            m.added,
            m.modified,
            m.deleted,
            m.unchanged
        );
    }
    let n = t.discrepancies();
    if n == 0 {
        out.push_str("result: OK, the stream matches the cluster\n");
    } else {
        let _ = writeln!(out, "result: {n} discrepancies");
    }
    out
}

fn section(out: &mut String, list: &[Finding], total: u64, limit: usize) {
    for f in list.iter().take(limit) {
        let _ = write!(out, "  {}", f.object());
        if let Some(u) = &f.uid {
            let _ = write!(out, " (uid {u})");
        }
        let _ = writeln!(out, ": {}", f.detail);
    }
    let shown = list.len().min(limit) as u64;
    if total > shown {
        let _ = writeln!(out, "  ... {} more (-o json lists them)", total - shown);
    }
}
