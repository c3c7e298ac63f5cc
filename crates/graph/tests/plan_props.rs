//! Property tests of stream assignment over random DAGs: every algorithm's plan is a valid
//! partition with ordered edges and minimal events, validation catches corrupted plans, and
//! nimble's chain cover has the DAG's width.

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use streamrec_graph::assign::nimble;
use streamrec_graph::{
    assign, simulate, Algorithm, AssignConfig, CostModel, DeviceProfile, OpGraph, Plan, SimMode,
    Step,
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
        let reach = nimble::transitive_closure(&g);
        let comparable = |a: usize, b: usize| reach[a][b / 64] >> (b % 64) & 1 == 1 || reach[b][a / 64] >> (a % 64) & 1 == 1;
        // Each chain is a chain of the closure, and the chains cover every op once.
        let mut all: Vec<usize> = chains.concat();
        all.sort_unstable();
        prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
        for c in &chains {
            for w in c.windows(2) {
                prop_assert!(comparable(w[0], w[1]) && w[0] < w[1]);
            }
        }
        // Brute-force width: the largest antichain.
        let mut width = 0;
        for mask in 1u32..(1 << n) {
            let members: Vec<usize> = (0..n).filter(|i| mask >> i & 1 == 1).collect();
            let anti = members.iter().enumerate().all(|(i, &a)| members[i + 1..].iter().all(|&b| !comparable(a, b)));
            if anti {
                width = width.max(members.len());
            }
        }
        prop_assert_eq!(chains.len(), width);
    }
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
