//! Property tests of stream assignment over random DAGs: every algorithm's plan is a valid
//! partition with ordered edges and minimal events, validation catches corrupted plans, and
//! nimble's chain cover has the DAG's width and its plan min(width, K) streams.
//!
//! Reachability and width are computed here, independently of `nimble` (a depth-first search
//! over the edges, brute force on small DAGs and a König antichain certificate on larger ones),
//! so that an over-eager `nimble::transitive_closure`, which would silently fold every plan
//! onto one stream, turns these tests red.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamrec_graph::assign::nimble;
use streamrec_graph::{
    assign, simulate, Algorithm, AssignConfig, CostModel, DeviceProfile, ModelSpec, OpGraph, Plan,
    SimMode, Step,
};

/// A random DAG of `n` ops: each forward pair is an edge with probability `p`; random costs.
fn random_dag(n: usize, p: f64, seed: u64) -> OpGraph {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut edges = Vec::new();
    for b in 0..n {
        for a in 0..b {
            if rng.random_bool(p) {
                edges.push((a, b));
            }
        }
    }
    let costs: Vec<(f64, f64)> = (0..n)
        .map(|_| (rng.random_range(1.0..1e7), rng.random_range(1.0..1e6)))
        .collect();
    OpGraph::synthetic(n, &edges, &costs).expect("forward edges")
}

/// Reachability computed here, independently of the code under test: a depth-first search
/// over the graph's edges from every op. `reach[a][b]` is true when a path of one or more edges
/// leads from `a` to `b`.
fn reachability(g: &OpGraph) -> Vec<Vec<bool>> {
    let n = g.len();
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (a, b) in g.edges() {
        succ[a].push(b);
    }
    (0..n)
        .map(|start| {
            let mut seen = vec![false; n];
            let mut stack = succ[start].clone();
            while let Some(v) = stack.pop() {
                if !seen[v] {
                    seen[v] = true;
                    stack.extend(&succ[v]);
                }
            }
            seen
        })
        .collect()
}

fn is_antichain(ops: &[usize], reach: &[Vec<bool>]) -> bool {
    ops.iter()
        .all(|&a| ops.iter().all(|&b| a == b || !reach[a][b]))
}

/// A largest antichain, by König's theorem on the bipartite graph "u reaches v" (a maximum
/// matching by simple augmenting paths, then the ops whose left copy is reachable from an
/// unmatched left vertex by an alternating path and whose right copy is not). It is checked to
/// be an antichain of `reach` and of size `n - matching`, so together with any chain cover of
/// the same size it proves both optimal (each chain holds at most one antichain member).
fn max_antichain(reach: &[Vec<bool>]) -> Vec<usize> {
    let n = reach.len();
    let mut mate_r: Vec<Option<usize>> = vec![None; n];
    fn augment(
        u: usize,
        reach: &[Vec<bool>],
        seen: &mut [bool],
        mate_r: &mut [Option<usize>],
    ) -> bool {
        for v in 0..reach.len() {
            if reach[u][v] && !seen[v] {
                seen[v] = true;
                if mate_r[v].is_none_or(|w| augment(w, reach, seen, mate_r)) {
                    mate_r[v] = Some(u);
                    return true;
                }
            }
        }
        false
    }
    let mut matching = 0;
    for u in 0..n {
        if augment(u, reach, &mut vec![false; n], &mut mate_r) {
            matching += 1;
        }
    }
    let mut mate_l: Vec<Option<usize>> = vec![None; n];
    for (v, m) in mate_r.iter().enumerate() {
        if let Some(u) = *m {
            mate_l[u] = Some(v);
        }
    }
    // Alternating search: left to right along any edge, right to left along the matching.
    let mut z_left = vec![false; n];
    let mut z_right = vec![false; n];
    let mut stack: Vec<usize> = (0..n).filter(|&u| mate_l[u].is_none()).collect();
    for &u in &stack {
        z_left[u] = true;
    }
    while let Some(u) = stack.pop() {
        for v in 0..n {
            if reach[u][v] && !z_right[v] {
                z_right[v] = true;
                if let Some(w) = mate_r[v] {
                    if !z_left[w] {
                        z_left[w] = true;
                        stack.push(w);
                    }
                }
            }
        }
    }
    let anti: Vec<usize> = (0..n).filter(|&v| z_left[v] && !z_right[v]).collect();
    assert_eq!(anti.len(), n - matching, "König: antichain size");
    assert!(
        is_antichain(&anti, reach),
        "König: {anti:?} is not an antichain"
    );
    anti
}

/// Each chain is ascending and each op reaches the next (by `reach`), and the chains cover
/// every op exactly once.
fn check_chain_cover(chains: &[Vec<usize>], reach: &[Vec<bool>]) -> Result<(), TestCaseError> {
    let mut all: Vec<usize> = chains.concat();
    all.sort_unstable();
    prop_assert_eq!(all, (0..reach.len()).collect::<Vec<_>>());
    for c in chains {
        for w in c.windows(2) {
            prop_assert!(
                w[0] < w[1] && reach[w[0]][w[1]],
                "{} does not reach {} in chain {:?}",
                w[0],
                w[1],
                c
            );
        }
    }
    Ok(())
}

/// Nimble's chain cover is a minimum one (as many chains as the independently computed width,
/// optionally also a known `width`), and its plan uses exactly min(width, k) streams.
fn check_nimble_width(g: &OpGraph, k: usize, width: Option<usize>) -> Result<(), TestCaseError> {
    let reach = reachability(g);
    let anti = max_antichain(&reach);
    if let Some(w) = width {
        prop_assert_eq!(anti.len(), w, "width of the graph");
    }
    let chains = nimble::min_chain_cover(g);
    check_chain_cover(&chains, &reach)?;
    prop_assert_eq!(chains.len(), anti.len(), "chains vs largest antichain");
    let cost = CostModel::new(DeviceProfile::h200());
    for batch in [1, 4096] {
        let cfg = AssignConfig {
            algo: Algorithm::Nimble,
            max_streams: k,
            batch,
            mode: SimMode::Graph,
            fuse: None,
        };
        let planned = assign(g, &cfg, &cost).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_plan(&planned.graph, &planned.plan, k)?;
        prop_assert_eq!(
            planned.plan.num_streams(),
            anti.len().min(k),
            "nimble streams at K = {}, batch {}",
            k,
            batch
        );
    }
    Ok(())
}

/// A streamrec-26-like fan-out: an optional fork op, then one parallel pipeline per entry of
/// `lens` (that many ops in a row, like a feature's lookup and branch layers or the bottom MLP),
/// a concatenation joining their last ops and `top` ops in a row after it. Op ids follow the
/// pipelines one after another, or layer by layer (`by_layer`, the way `from_spec` numbers
/// features). Its width is `lens.len()`. A few transitive shortcuts (a pipeline's first op to
/// the concatenation) are added at random; they change no reachability.
fn fan_out(lens: &[usize], top: usize, fork: bool, by_layer: bool, seed: u64) -> OpGraph {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut next = usize::from(fork);
    let mut ids: Vec<Vec<usize>> = lens.iter().map(|&l| vec![0; l]).collect();
    if by_layer {
        for layer in 0..lens.iter().copied().max().unwrap_or(0) {
            for p in ids.iter_mut().filter(|p| layer < p.len()) {
                p[layer] = next;
                next += 1;
            }
        }
    } else {
        for p in &mut ids {
            for id in p.iter_mut() {
                *id = next;
                next += 1;
            }
        }
    }
    let concat = next;
    let n = concat + 1 + top;
    let mut edges = Vec::new();
    for p in &ids {
        if fork {
            edges.push((0, p[0]));
        }
        edges.extend(p.windows(2).map(|w| (w[0], w[1])));
        edges.push((p[p.len() - 1], concat));
        if p.len() > 1 && rng.random_bool(0.2) {
            edges.push((p[0], concat));
        }
    }
    edges.extend((concat..n - 1).map(|a| (a, a + 1)));
    let costs: Vec<(f64, f64)> = (0..n)
        .map(|_| (rng.random_range(1.0..1e7), rng.random_range(1.0..1e6)))
        .collect();
    OpGraph::synthetic(n, &edges, &costs).expect("forward edges")
}

fn all_algorithms() -> impl Iterator<Item = Algorithm> {
    Algorithm::ALL.into_iter().chain([Algorithm::Auto])
}

/// Checks every invariant a plan of `g` with at most `k` streams must hold.
fn check_plan(g: &OpGraph, plan: &Plan, k: usize) -> Result<(), TestCaseError> {
    let mut ops: Vec<usize> = plan.stream_ops().concat();
    ops.sort_unstable();
    prop_assert_eq!(
        ops,
        (0..g.len()).collect::<Vec<_>>(),
        "each op exactly once"
    );
    prop_assert!(
        plan.validate(g).is_ok(),
        "{}: {:?}",
        plan.algo,
        plan.validate(g)
    );
    prop_assert!(plan.num_streams() <= k && plan.num_streams() >= 1);
    let mut recorded = vec![false; plan.num_events()];
    for (_, step) in plan.issue_order() {
        match step {
            Step::Record(e) => recorded[e] = true,
            Step::Wait(e) => prop_assert!(
                recorded[e],
                "{}: wait on e{} before its record",
                plan.algo,
                e
            ),
            Step::Launch(_) => {}
        }
    }
    let stream_of = plan.stream_of();
    let cross = g
        .edges()
        .iter()
        .filter(|(a, b)| stream_of[*a] != stream_of[*b])
        .count();
    prop_assert!(
        plan.num_waits() <= cross,
        "{}: {} waits > {} cross edges",
        plan.algo,
        plan.num_waits(),
        cross
    );
    prop_assert!(plan.num_events() <= plan.num_waits());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_algorithm_gives_a_valid_plan(
        n in 1usize..=200,
        p in prop_oneof![Just(0.0), 0.001f64..0.05, 0.05f64..0.3],
        seed in any::<u64>(),
        k in 1usize..=32,
        batch in prop_oneof![Just(1usize), Just(64), Just(4096)],
        gpu in any::<bool>(),
    ) {
        let g = random_dag(n, p, seed);
        let profile = if gpu { DeviceProfile::h200() } else { DeviceProfile::cpu() };
        let cost = CostModel::new(profile);
        for algo in all_algorithms() {
            let cfg = AssignConfig { algo, max_streams: k, batch, mode: SimMode::Graph, fuse: None };
            let planned = assign(&g, &cfg, &cost).map_err(|e| TestCaseError::fail(e.to_string()))?;
            check_plan(&planned.graph, &planned.plan, k)?;
            for mode in SimMode::ALL {
                let r = simulate(&planned.graph, &planned.plan, &cost, batch, mode);
                prop_assert!(r.latency_us.is_finite() && r.latency_us > 0.0);
                for op in 0..g.len() {
                    prop_assert!(r.op_start_us[op] < r.op_end_us[op]);
                    for q in g.preds(op) {
                        prop_assert!(r.op_end_us[q] <= r.op_start_us[op] + 1e-9, "simulated order breaks an edge");
                    }
                }
            }
        }
    }

    #[test]
    fn validate_rejects_corrupted_plans(
        n in 2usize..=120,
        p in 0.02f64..0.3,
        seed in any::<u64>(),
        k in 2usize..=16,
        pick in any::<prop::sample::Index>(),
    ) {
        let g = random_dag(n, p, seed);
        let cost = CostModel::new(DeviceProfile::h200());
        for algo in Algorithm::ALL {
            let cfg = AssignConfig { algo, max_streams: k, batch: 1, mode: SimMode::Graph, fuse: None };
            let plan = assign(&g, &cfg, &cost).map_err(|e| TestCaseError::fail(e.to_string()))?.plan;
            // Dropping any wait leaves its edge unordered (waits are minimal).
            let waits: Vec<(usize, usize)> = plan.streams.iter().enumerate()
                .flat_map(|(s, st)| st.iter().enumerate().filter(|(_, x)| matches!(x, Step::Wait(_))).map(move |(i, _)| (s, i)))
                .collect();
            if !waits.is_empty() {
                let (s, i) = waits[pick.index(waits.len())];
                let mut bad = plan.clone();
                bad.streams[s].remove(i);
                prop_assert!(bad.validate(&g).is_err(), "{}: dropping a wait went unnoticed", plan.algo);
            }
            // Launching an op twice.
            let op = pick.index(g.len());
            let mut bad = plan.clone();
            let last = bad.streams.len() - 1;
            bad.streams[last].push(Step::Launch(op));
            let err = bad.validate(&g).unwrap_err().to_string();
            prop_assert!(err.contains("launched twice"), "{}", err);
            // Dropping an op.
            let mut bad = plan.clone();
            let s = plan.stream_of()[op];
            bad.streams[s].retain(|x| *x != Step::Launch(op));
            if bad.streams[s].iter().any(|x| matches!(x, Step::Launch(_))) {
                let err = bad.validate(&g).unwrap_err().to_string();
                prop_assert!(err.contains("not launched"), "{}", err);
            }
        }
    }

    #[test]
    fn nimble_chain_count_is_the_width(n in 1usize..=12, p in 0.0f64..0.6, seed in any::<u64>()) {
        let g = random_dag(n, p, seed);
        let chains = nimble::min_chain_cover(&g);
        let reach = reachability(&g);
        check_chain_cover(&chains, &reach)?;
        // Brute-force width: the largest antichain of the independently computed reachability.
        let mut width = 0;
        for mask in 1u32..(1 << n) {
            let members: Vec<usize> = (0..n).filter(|i| mask >> i & 1 == 1).collect();
            if is_antichain(&members, &reach) {
                width = width.max(members.len());
            }
        }
        prop_assert_eq!(chains.len(), width);
        prop_assert_eq!(max_antichain(&reach).len(), width, "the Konig certificate is a largest antichain");
    }

    #[test]
    fn nimble_closure_is_reachability(n in 1usize..=150, p in prop_oneof![0.0f64..0.05, 0.05f64..0.5], seed in any::<u64>()) {
        let g = random_dag(n, p, seed);
        let reach = reachability(&g);
        let closure = nimble::transitive_closure(&g);
        prop_assert_eq!(closure.len(), n);
        for a in 0..n {
            for b in 0..n {
                prop_assert_eq!(closure[a][b / 64] >> (b % 64) & 1 == 1, reach[a][b], "closure[{}][{}]", a, b);
            }
        }
    }

    #[test]
    fn nimble_uses_min_of_width_and_k_streams_on_random_dags(
        n in 1usize..=80,
        p in prop_oneof![Just(0.0), 0.005f64..0.05, 0.05f64..0.4],
        seed in any::<u64>(),
        k in 1usize..=40,
    ) {
        let g = random_dag(n, p, seed);
        check_nimble_width(&g, k, None)?;
    }

    #[test]
    fn nimble_uses_min_of_width_and_k_streams_on_fan_outs(
        lens in prop::collection::vec(1usize..=4, 1..=40),
        top in 0usize..=5,
        fork in any::<bool>(),
        by_layer in any::<bool>(),
        k in 1usize..=48,
        seed in any::<u64>(),
    ) {
        let g = fan_out(&lens, top, fork, by_layer, seed);
        check_nimble_width(&g, k, Some(lens.len()))?;
    }
}

#[test]
fn nimble_uses_min_of_width_and_k_streams_on_streamrec_26() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/streamrec-26.toml");
    let g = OpGraph::from_spec(&ModelSpec::load(&path, Some(1000)).expect("workload parses"));
    // 26 feature pipelines and the bottom MLP run side by side.
    for k in [1, 2, 4, 8, 26, 27, 28, 64] {
        check_nimble_width(&g, k, Some(27)).unwrap();
    }
}

#[test]
fn the_width_certificate_sees_hand_made_widths() {
    // A diamond has width 2, a chain 1, an edgeless graph n, and a transitive edge changes nothing.
    let diamond = OpGraph::synthetic(4, &[(0, 1), (0, 2), (1, 3), (2, 3)], &[]).unwrap();
    let chain = OpGraph::synthetic(4, &[(0, 1), (1, 2), (2, 3), (0, 3)], &[]).unwrap();
    let flat = OpGraph::synthetic(5, &[], &[]).unwrap();
    // 0 -> 2, 1 -> 2, 1 -> 3: {0, 1} and {0, 3} and {2, 3} are antichains, {0, 1, 3} is not.
    let zig = OpGraph::synthetic(4, &[(0, 2), (1, 2), (1, 3)], &[]).unwrap();
    for (g, width) in [(&diamond, 2), (&chain, 1), (&flat, 5), (&zig, 2)] {
        let reach = reachability(g);
        let anti = max_antichain(&reach);
        assert!(is_antichain(&anti, &reach), "{anti:?}");
        assert_eq!(anti.len(), width);
        assert_eq!(nimble::min_chain_cover(g).len(), width);
    }
    let reach = reachability(&chain);
    assert!(reach[0][3] && reach[1][3] && !reach[3][0] && !reach[2][2]);
    let reach = reachability(&zig);
    assert!(!is_antichain(&[0, 1, 3], &reach) && is_antichain(&[0, 3], &reach));
}

#[test]
fn validate_rejects_hand_made_errors() {
    // 0 -> 1, 0 -> 2, 1 -> 3, 2 -> 3.
    let g = OpGraph::synthetic(4, &[(0, 1), (0, 2), (1, 3), (2, 3)], &[]).unwrap();
    let good = Plan {
        algo: "hand".into(),
        streams: vec![
            vec![
                Step::Launch(0),
                Step::Record(0),
                Step::Launch(1),
                Step::Wait(1),
                Step::Launch(3),
            ],
            vec![Step::Wait(0), Step::Launch(2), Step::Record(1)],
        ],
        num_events: 2,
    };
    good.validate(&g).unwrap();
    assert_eq!(good.num_waits(), 2);
    assert_eq!(good.stream_of(), vec![0, 0, 1, 0]);
    let mut out_of_order = good.clone();
    out_of_order.streams[0].swap(0, 2);
    assert!(out_of_order
        .validate(&g)
        .unwrap_err()
        .to_string()
        .contains("not ordered"));
    let mut twice = good.clone();
    twice.streams[1].push(Step::Record(0));
    assert!(twice
        .validate(&g)
        .unwrap_err()
        .to_string()
        .contains("recorded twice"));
    let mut never = good.clone();
    never.num_events = 3;
    assert!(never
        .validate(&g)
        .unwrap_err()
        .to_string()
        .contains("never recorded"));
    let mut empty = good.clone();
    empty.streams.push(Vec::new());
    assert!(empty
        .validate(&g)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    // A wait whose record only comes after something that waits on this stream: deadlock.
    let deadlock = Plan {
        algo: "hand".into(),
        streams: vec![
            vec![
                Step::Launch(0),
                Step::Wait(1),
                Step::Launch(1),
                Step::Record(0),
                Step::Launch(3),
            ],
            vec![Step::Wait(0), Step::Launch(2), Step::Record(1)],
        ],
        num_events: 2,
    };
    assert!(deadlock.validate(&g).is_err());
    // Issue order puts every record before its waits.
    let order = good.issue_order();
    let rec = order
        .iter()
        .position(|x| *x == (0, Step::Record(0)))
        .unwrap();
    let wait = order.iter().position(|x| *x == (1, Step::Wait(0))).unwrap();
    assert!(rec < wait);
    assert_eq!(order.len(), 8);
}

#[test]
fn sync_minimisation_skips_implied_waits() {
    // 0 -> 1 -> 2 and 0 -> 2: with 0 on stream 0 and 1, 2 on stream 1, one wait covers both edges.
    let g = OpGraph::synthetic(3, &[(0, 1), (1, 2), (0, 2)], &[]).unwrap();
    let plan = Plan::from_streams(&g, "t", vec![vec![0], vec![1, 2]]).unwrap();
    assert_eq!(plan.num_waits(), 1);
    // A diamond across three streams: the join needs the two branches, the fork is implied.
    let g = OpGraph::synthetic(4, &[(0, 1), (0, 2), (1, 3), (2, 3), (0, 3)], &[]).unwrap();
    let plan = Plan::from_streams(&g, "t", vec![vec![0, 3], vec![1], vec![2]]).unwrap();
    assert_eq!(plan.num_waits(), 4);
    // Transitivity through a third stream: 0 (s0) -> 1 (s1) -> 2 (s2), and 0 -> 2 is implied.
    let g = OpGraph::synthetic(3, &[(0, 1), (1, 2), (0, 2)], &[]).unwrap();
    let plan = Plan::from_streams(&g, "t", vec![vec![0], vec![1], vec![2]]).unwrap();
    assert_eq!(plan.num_waits(), 2);
    // Contradicting orders are rejected.
    assert!(Plan::from_streams(&g, "t", vec![vec![2, 0, 1]]).is_err());
    assert!(Plan::from_streams(&g, "t", vec![vec![0, 1]]).is_err());
}
