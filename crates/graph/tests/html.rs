//! The HTML plan view parsed back: for streamrec-26, every algorithm's section draws every op
//! once in its graph and once per simulated lane set, one lane per plan stream (plus the host),
//! and exactly the plan's waits; strings are escaped, the page loads nothing from outside, and a
//! measured trace's median request is shown on the same axis.

use std::collections::BTreeMap;
use std::path::Path;

use streamrec_graph::html::{self, MeasuredTimeline, Options};
use streamrec_graph::{
    compare, compare_plans, CostModel, DeviceProfile, ModelSpec, OpGraph, OpKind, Plan, Step,
};

fn streamrec26() -> OpGraph {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/streamrec-26.toml");
    OpGraph::from_spec(&ModelSpec::load(&p, Some(1000)).expect("workload parses"))
}

/// Every piece of `s` from an occurrence of `open` to the next `close` (inclusive of `open`).
fn pieces<'a>(s: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(open) {
        let tail = &rest[i..];
        let end = tail.find(close).expect("piece is closed");
        out.push(&tail[..end + close.len()]);
        rest = &tail[end + close.len()..];
    }
    out
}

/// The values of attribute `name` (double-quoted), in document order.
fn attrs(s: &str, name: &str) -> Vec<String> {
    let pat = format!(" {name}=\"");
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(&pat) {
        let tail = &rest[i + pat.len()..];
        let end = tail.find('"').expect("attribute is closed");
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn attr(s: &str, name: &str) -> String {
    attrs(s, name).into_iter().next().unwrap_or_default()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn waited_events(plan: &Plan) -> Vec<String> {
    sorted(
        plan.streams
            .iter()
            .flatten()
            .filter_map(|s| match s {
                Step::Wait(e) => Some(format!("e{e}")),
                _ => None,
            })
            .collect(),
    )
}

/// Checks one page against the plans it was rendered from.
fn check_page(page: &str, g_views: &[streamrec_graph::Compared], measured: Option<usize>) {
    let sections = pieces(page, "<section class=\"algo\"", "</section>");
    assert_eq!(sections.len(), g_views.len());
    assert_eq!(
        sections
            .iter()
            .filter(|s| !s[..s.find('>').unwrap()].contains(" hidden"))
            .count(),
        1,
        "exactly one section is shown at load"
    );
    let rows = pieces(page, "<tr data-algo=", "</tr>");
    assert_eq!(rows.len(), g_views.len());
    for (sec, v) in sections.iter().zip(g_views) {
        let g = &v.planned.graph;
        let plan = &v.planned.plan;
        let key = v.algorithm.as_str();
        let head = &sec[..sec.find('>').unwrap()];
        assert_eq!(attr(head, "data-algo"), key);
        assert_eq!(attr(head, "data-streams"), plan.num_streams().to_string());
        assert_eq!(attr(head, "data-waits"), plan.num_waits().to_string());
        assert!(rows
            .iter()
            .any(|r| r.contains(&format!(">{}<", v.row.algo))));
        let names: Vec<String> = sorted(g.ops().map(|o| o.name.clone()).collect());
        let stream_of = plan.stream_of();

        // The graph: each op once, coloured by (and labelled with) its stream; the waits.
        let graphs = pieces(sec, "<svg class=\"graph\"", "</svg>");
        assert_eq!(graphs.len(), 1, "{key}: one graph");
        let graph = graphs[0];
        let ops = pieces(graph, "<g class=\"op\"", "</g>");
        assert_eq!(
            sorted(ops.iter().map(|o| attr(o, "data-op")).collect()),
            names,
            "{key}: every op exactly once in the graph"
        );
        for o in &ops {
            let id = g.find(&attr(o, "data-op")).unwrap();
            assert_eq!(attr(o, "data-stream"), stream_of[id].to_string(), "{key}");
            assert!(o.contains("<title>"), "{key}: ops have a hover text");
            assert!(
                o.contains(" us alone"),
                "{key}: the hover text has the cost"
            );
        }
        assert_eq!(
            sorted(attrs(graph, "data-wait")),
            waited_events(plan),
            "{key}: the waits drawn are the plan's waits"
        );
        let fused = g
            .ops()
            .filter(|o| matches!(o.kind, OpKind::TableBatchedEmbeddingBag { .. }))
            .count();
        assert_eq!(
            attrs(graph, "data-fused").len(),
            fused,
            "{key}: fused groups"
        );

        // The timelines: eager and graph (and measured), each op once per simulated lane set.
        let gantts = pieces(sec, "<svg class=\"gantt", "</svg>");
        let sets: Vec<String> = gantts.iter().map(|g| attr(g, "data-laneset")).collect();
        let mut want = vec!["eager".to_string(), "graph".to_string()];
        if measured.is_some() {
            want.push("measured".into());
        }
        assert_eq!(sets, want, "{key}");
        for (gantt, set) in gantts.iter().zip(&sets) {
            let lanes = pieces(gantt, "<g class=\"lane\"", "</g>");
            if set == "measured" {
                assert!(
                    attrs(gantt, "data-op").is_empty(),
                    "measured spans are not ops"
                );
                assert_eq!(attrs(gantt, "data-span").len(), measured.unwrap());
                continue;
            }
            let mut want_lanes = vec!["host".to_string()];
            want_lanes.extend((0..plan.num_streams()).map(|s| s.to_string()));
            let got_lanes: Vec<String> = lanes.iter().map(|l| attr(l, "data-lane")).collect();
            assert_eq!(
                got_lanes, want_lanes,
                "{key} {set}: a lane per stream and the host"
            );
            assert_eq!(
                sorted(attrs(gantt, "data-op")),
                names,
                "{key} {set}: every op once per lane set"
            );
            for (lane, ops) in lanes[1..].iter().zip(plan.stream_ops()) {
                let want: Vec<String> = ops.iter().map(|&op| g.op(op).name.clone()).collect();
                assert_eq!(
                    attrs(lane, "data-op"),
                    want,
                    "{key} {set}: the stream's ops"
                );
            }
            assert_eq!(
                sorted(attrs(gantt, "data-gwait")),
                waited_events(plan),
                "{key} {set}: the waits"
            );
        }
    }
}

#[test]
fn every_algorithm_draws_every_op_lane_and_wait_of_its_plan() {
    let g = streamrec26();
    for (device, k, batch, fuse) in [
        (DeviceProfile::h200(), 4, 128, None),
        (DeviceProfile::h200(), 8, 1, None),
        (DeviceProfile::cpu(), 2, 4096, None),
        (DeviceProfile::h200(), 4, 64, Some(4)),
    ] {
        let cost = CostModel::new(device);
        let views = compare_plans(&g, k, batch, &cost, fuse).unwrap();
        assert_eq!(views.len(), 6);
        // The rows are what `compare` prints.
        if fuse.is_none() {
            let rows: Vec<_> = views.iter().map(|v| v.row.clone()).collect();
            assert_eq!(rows, compare(&g, k, batch, &cost).unwrap());
        }
        assert!(
            views.iter().any(|v| v.planned.plan.num_waits() > 0),
            "some plan has waits to draw"
        );
        let opts = Options {
            batch,
            max_streams: k,
            fuse,
            measured: None,
            selected: Some("streamrec"),
        };
        let page = html::render(&views, &cost, &opts);
        check_page(&page, &views, None);
        assert_eq!(page, html::page(&g, &cost, &opts).unwrap(), "page = render");
        let shown = pieces(&page, "<section class=\"algo\"", ">")
            .into_iter()
            .find(|h| !h.contains(" hidden"))
            .unwrap();
        assert_eq!(attr(shown, "data-algo"), "streamrec");
        if fuse.is_some() {
            assert!(
                page.contains("data-fused=\"emb.fused.0\""),
                "fused groups outlined"
            );
        }
    }
}

#[test]
fn the_page_is_self_contained() {
    let g = streamrec26();
    let cost = CostModel::new(DeviceProfile::h200());
    let page = html::page(
        &g,
        &cost,
        &Options {
            batch: 128,
            max_streams: 4,
            fuse: None,
            measured: None,
            selected: None,
        },
    )
    .unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.trim_end().ends_with("</html>"));
    for bad in [
        "<link",
        " src=",
        "@import",
        "href=",
        "url(http",
        "fetch(",
        "XMLHttpRequest",
    ] {
        assert!(
            !page.contains(bad),
            "the page must load nothing: found {bad}"
        );
    }
    let without_ns = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!without_ns.contains("http://") && !without_ns.contains("https://"));
    assert_eq!(page.matches("<script>").count(), 1);
    // Unknown or absent selections show the first algorithm.
    let first = pieces(&page, "<section class=\"algo\"", ">")
        .into_iter()
        .find(|h| !h.contains(" hidden"))
        .unwrap();
    assert_eq!(attr(first, "data-algo"), "single");
}

fn trace_json(name: &str) -> String {
    // Context 0: requests 1, 2, 3 lasting 10, 30 and 20 us; context 1: one long request.
    let mut ev = vec![
        r#"{"name":"process_name","ph":"M","pid":0,"tid":0,"args":{"name":"context 0"}}"#
            .to_string(),
    ];
    for (req, t0, len) in [
        (1u64, 100.0f64, 10.0f64),
        (2, 200.0, 30.0),
        (3, 300.0, 20.0),
    ] {
        ev.push(format!(
            r#"{{"name":"emb.C1","cat":"op","ph":"X","ts":{t0},"dur":{},"pid":0,"tid":0,"args":{{"op":1,"batch":16,"request":{req}}}}}"#,
            len / 2.0
        ));
        ev.push(format!(
            r#"{{"name":"{name}","cat":"op","ph":"X","ts":{},"dur":{},"pid":0,"tid":1,"args":{{"op":2,"batch":16,"request":{req}}}}}"#,
            t0 + len / 4.0,
            len * 3.0 / 4.0
        ));
    }
    ev.push(
        r#"{"name":"top.0","cat":"op","ph":"X","ts":0,"dur":900,"pid":1,"tid":0,"args":{"op":3,"batch":16,"request":9}}"#
            .to_string(),
    );
    format!(
        r#"{{"traceEvents":[{}],"displayTimeUnit":"ns"}}"#,
        ev.join(",")
    )
}

#[test]
fn a_measured_trace_shows_its_median_request_on_the_same_axis() {
    let m = MeasuredTimeline::from_chrome_trace(&trace_json("<b>\\\"x'&")).unwrap();
    assert_eq!(
        m.label,
        "measured: context 0, request 3 (median length of 3), batch 16"
    );
    assert_eq!(m.spans.len(), 2);
    assert_eq!(m.streams(), vec![0, 1]);
    assert_eq!(m.spans[0].start_us, 0.0);
    assert_eq!(m.spans[0].end_us, 10.0);
    assert_eq!((m.spans[1].start_us, m.spans[1].end_us), (5.0, 20.0));
    assert_eq!(m.duration_us(), 20.0);
    assert_eq!(m.spans[1].name, "<b>\"x'&");

    let g = streamrec26();
    let cost = CostModel::new(DeviceProfile::cpu());
    let views = compare_plans(&g, 4, 16, &cost, None).unwrap();
    let page = html::render(
        &views,
        &cost,
        &Options {
            batch: 16,
            max_streams: 4,
            fuse: None,
            measured: Some(&m),
            selected: None,
        },
    );
    check_page(&page, &views, Some(2));
    assert!(!page.contains("<b>"), "span names are escaped");
    assert!(page.contains("&lt;b&gt;&quot;x&#39;&amp;"));

    for bad in [
        "",
        "[1, 2",
        "{\"a\": 1}",
        "[]",
        "[{\"ph\":\"B\",\"ts\":1}]",
        "7",
    ] {
        let e = MeasuredTimeline::from_chrome_trace(bad).unwrap_err();
        assert!(!e.to_string().is_empty(), "{bad}");
    }
    // A bare array of spans without requests is one request.
    let m = MeasuredTimeline::from_chrome_trace(
        r#"[{"name":"a","ph":"X","ts":5,"dur":2,"pid":0,"tid":3},{"name":"b","ph":"X","ts":6,"dur":4,"pid":0,"tid":0}]"#,
    )
    .unwrap();
    assert_eq!(m.label, "measured: context 0");
    assert_eq!(m.streams(), vec![0, 3]);
    assert_eq!(m.duration_us(), 5.0);
}

#[test]
fn names_from_the_spec_are_escaped() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/tiny.toml");
    let text = std::fs::read_to_string(p).unwrap();
    let evil = r#"<script>alert("x")</script> & 'q'"#;
    let text = text.replace("name = \"tiny\"", &format!("name = {}", toml_string(evil)));
    let spec = ModelSpec::parse(&text, "tiny", None).unwrap();
    assert_eq!(spec.name, evil);
    let g = OpGraph::from_spec(&spec);
    let cost = CostModel::new(DeviceProfile::h200());
    let page = html::page(
        &g,
        &cost,
        &Options {
            batch: 4,
            max_streams: 3,
            fuse: None,
            measured: None,
            selected: Some("\"><script>bad()</script>"),
        },
    )
    .unwrap();
    assert_eq!(
        page.matches("<script>").count(),
        1,
        "only the page's own script"
    );
    assert!(!page.contains("alert(\"x\")"));
    assert!(!page.contains("bad()"), "an unknown selection is dropped");
    assert!(page.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;q&#39;"));
    let views = compare_plans(&g, 3, 4, &cost, None).unwrap();
    check_page(&page, &views, None);
    // Selections that do not name an algorithm section fall back to the first.
    let counts: BTreeMap<&str, usize> = [("<section", 6usize), ("</section>", 6)].into();
    for (pat, n) in counts {
        assert_eq!(page.matches(pat).count(), n, "{pat}");
    }
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
