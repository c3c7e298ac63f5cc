//! Device profiles, the cost model with measured times, and the simulator's timing model on small
//! graphs whose latency can be worked out by hand.

use streamrec_graph::{
    simulate, CostModel, DeviceProfile, GraphError, MeasuredCosts, OpGraph, Plan, SimMode, Step,
};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

#[test]
fn profiles_round_trip_and_reject_nonsense() {
    for p in [DeviceProfile::h200(), DeviceProfile::cpu()] {
        p.check().unwrap();
        let text = p.to_toml_string();
        assert_eq!(DeviceProfile::from_toml_str(&text).unwrap(), p);
        assert_eq!(DeviceProfile::by_name_or_path(&p.name).unwrap(), p);
    }
    let dir = std::env::temp_dir().join(format!("streamrec-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mine.toml");
    let mut mine = DeviceProfile::cpu();
    mine.name = "mine".into();
    mine.units = 8.0;
    std::fs::write(&path, mine.to_toml_string()).unwrap();
    assert_eq!(
        DeviceProfile::by_name_or_path(path.to_str().unwrap()).unwrap(),
        mine
    );
    assert_eq!(DeviceProfile::load(&path).unwrap(), mine);
    std::fs::remove_dir_all(&dir).unwrap();

    let e = DeviceProfile::by_name_or_path("a100")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown device profile `a100`"), "{e}");
    let text = DeviceProfile::h200()
        .to_toml_string()
        .replace("units = 132.0", "units = 0.0");
    let e = DeviceProfile::from_toml_str(&text).unwrap_err();
    assert!(
        matches!(e, GraphError::Spec { ref field, .. } if field == "profile.units"),
        "{e}"
    );
    let text = format!("{}\nextra = 1\n", DeviceProfile::h200().to_toml_string());
    assert!(DeviceProfile::from_toml_str(&text).is_err());
}

#[test]
fn estimate_is_a_roofline_with_a_floor() {
    // Op 0: tiny; op 1: 48 GFLOP per sample (1 ms on the whole H200); op 2: 4.3 GB (1 ms).
    let g = OpGraph::synthetic(3, &[], &[(1.0, 1.0), (48e9, 1.0), (1.0, 4.3e9)]).unwrap();
    let cost = CostModel::new(DeviceProfile::h200());
    let (t, u) = cost.estimate(&g, 0, 1);
    assert_eq!((t, u), (2.0, 1.0));
    let (t, u) = cost.estimate(&g, 1, 1);
    assert!(close(t, 1000.0) && u == 132.0, "{t} {u}");
    assert!(close(cost.op_us(&g, 2, 1), 1000.0));
    // On the CPU profile a kernel gets one core: half the machine's FLOP/s.
    let cpu = CostModel::new(DeviceProfile::cpu());
    let (t, u) = cpu.estimate(&g, 1, 1);
    assert!(close(t, 48e9 / 40e9 * 1e6) && u == 1.0);
}

#[test]
fn measured_costs_override_interpolate_and_round_trip() {
    let g = OpGraph::synthetic(2, &[(0, 1)], &[]).unwrap();
    let mut m = MeasuredCosts {
        device: "cpu".into(),
        ..MeasuredCosts::default()
    };
    m.insert("op0", 1, 10.0);
    m.insert("op0", 64, 40.0);
    m.insert("op0", 128, 100.0);
    let cost = CostModel::new(DeviceProfile::cpu()).with_measured(m.clone());
    assert_eq!(cost.op_us(&g, 0, 1), 10.0);
    assert!(close(cost.op_us(&g, 0, 32), 10.0 + 30.0 * 31.0 / 63.0));
    assert_eq!(cost.op_us(&g, 0, 96), 70.0);
    assert_eq!(cost.op_us(&g, 0, 256), 200.0);
    // Unmeasured op: the estimate.
    assert_eq!(cost.op_us(&g, 1, 1), cost.estimate(&g, 1, 1).0);

    let dir = std::env::temp_dir().join(format!("streamrec-measured-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for ext in ["json", "toml"] {
        let path = dir.join(format!("m.{ext}"));
        m.save(&path).unwrap();
        assert_eq!(MeasuredCosts::load(&path).unwrap(), m);
    }
    std::fs::write(
        dir.join("bad.json"),
        r#"{"device": "x", "ops": {"op0": {"zero": 1.0}}}"#,
    )
    .unwrap();
    let e = MeasuredCosts::load(dir.join("bad.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("`zero` is not a positive integer"), "{e}");
    assert!(m.save(dir.join("m.csv")).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A profile with round numbers: 10 units, kernels of one unit unless big.
fn toy() -> DeviceProfile {
    DeviceProfile {
        name: "toy".into(),
        peak_flops: 10e6,
        mem_bandwidth: 10e6,
        launch_us: 3.0,
        graph_node_us: 0.5,
        event_us: 1.0,
        event_host_us: 0.5,
        sync_us: 5.0,
        wake_us: 0.0,
        min_kernel_us: 2.0,
        units: 10.0,
        max_units_per_kernel: 10.0,
        max_concurrent_kernels: 128,
        gather_efficiency: 1.0,
    }
}

#[test]
fn simulator_chain_latency_by_hand() {
    // Three tiny ops in a chain: each 2 us (the floor), one unit.
    let g = OpGraph::synthetic(3, &[(0, 1), (1, 2)], &[]).unwrap();
    let cost = CostModel::new(toy());
    let plan = Plan::single(&g);
    // Graph: launch 3, then 3 x (gap 0.5 + 2), sync 5.
    let r = simulate(&g, &plan, &cost, 1, SimMode::Graph);
    assert!(close(r.latency_us, 3.0 + 7.5 + 5.0), "{}", r.latency_us);
    assert!(close(r.per_stream_busy_us[0], 6.0));
    // Eager: launches at 3, 6, 9 are slower than the kernels; the last ends at 9 + 0.5 + 2.
    let r = simulate(&g, &plan, &cost, 1, SimMode::Eager);
    assert!(close(r.latency_us, 11.5 + 5.0), "{}", r.latency_us);
    assert!(close(r.host_us, 9.0));
}

#[test]
fn simulator_overlaps_small_kernels_and_shares_big_ones() {
    // Two independent ops on two streams.
    let cost = CostModel::new(toy());
    let two = |flops: f64| {
        let g = OpGraph::synthetic(2, &[], &[(flops, 0.0), (flops, 0.0)]).unwrap();
        let plan = Plan::from_streams(&g, "t", vec![vec![0], vec![1]]).unwrap();
        let one = Plan::single(&g);
        let a = simulate(&g, &plan, &cost, 1, SimMode::Graph).latency_us;
        let b = simulate(&g, &one, &cost, 1, SimMode::Graph).latency_us;
        (a, b)
    };
    // Small kernels (one unit each) overlap: 3 + (1 fork) + 0.5 + 2 + 1 (join) + 5 = 12.5.
    let (multi, single) = two(1.0);
    assert!(close(multi, 12.5), "{multi}");
    assert!(close(single, 3.0 + 2.0 * 2.5 + 5.0), "{single}");
    // Kernels that each fill the device (100 us alone) share it: together they take 200 us.
    let (multi, single) = two(1e3);
    assert!(close(single, 3.0 + 2.0 * 100.5 + 5.0), "{single}");
    assert!(multi > 200.0 && multi < 200.0 + 10.0, "{multi}");
    // Half-device kernels (5 units, 2 us each) fit side by side.
    let (multi, _) = two(10.0);
    assert!(close(multi, 12.5), "{multi}");
}

#[test]
fn simulator_respects_events_and_capacity() {
    // 0 on stream 0, 1 on stream 1 waits for it.
    let g = OpGraph::synthetic(2, &[(0, 1)], &[]).unwrap();
    let cost = CostModel::new(toy());
    let plan = Plan::from_streams(&g, "t", vec![vec![0], vec![1]]).unwrap();
    assert_eq!(plan.streams[1], vec![Step::Wait(0), Step::Launch(1)]);
    let r = simulate(&g, &plan, &cost, 1, SimMode::Graph);
    // Op 0 ends at 3 + 0.5 + 2; op 1 starts one event later plus its gap.
    assert!(close(r.op_end_us[0], 5.5));
    assert!(close(r.op_start_us[1], 5.5 + 1.0 + 0.5));
    // At most one kernel at a time: independent small kernels serialise.
    let mut serial = toy();
    serial.max_concurrent_kernels = 1;
    let g = OpGraph::synthetic(2, &[], &[]).unwrap();
    let plan = Plan::from_streams(&g, "t", vec![vec![0], vec![1]]).unwrap();
    let r = simulate(&g, &plan, &CostModel::new(serial), 1, SimMode::Graph);
    assert!(r.op_start_us[1] >= r.op_end_us[0] || r.op_start_us[0] >= r.op_end_us[1]);
}

#[test]
fn h200_profile_reproduces_the_embedding_bag_anchors() {
    // 26 embedding bags (100k x 64, pooling 20), batch 1, as a CUDA graph: 69.5 us on one stream
    // and 18.4 us on 8 streams (docs/h200.md).
    let spec = streamrec_graph::ModelSpec::parse(
        "dense = 13\n[sparse]\ncount = 26\nrows = 100000\ndim = 64\npooling = 20\n[interaction]\nkind = \"cat\"\n[top]\nlayers = [1]\n",
        "bags",
        None,
    )
    .unwrap();
    let full = OpGraph::from_spec(&spec);
    // Keep only the bags: a graph of 26 independent lookups.
    let ops: Vec<_> = full
        .ops()
        .filter(|o| o.name.starts_with("emb."))
        .cloned()
        .collect();
    let g = OpGraph::from_ops(full.spec.clone(), ops).unwrap();
    let cost = CostModel::new(DeviceProfile::h200());
    let one = simulate(&g, &Plan::single(&g), &cost, 1, SimMode::Graph).latency_us;
    let lists: Vec<Vec<usize>> = (0..8)
        .map(|s| (0..26).filter(|i| i % 8 == s).collect())
        .collect();
    let eight = Plan::from_streams(&g, "t", lists).unwrap();
    let eight = simulate(&g, &eight, &cost, 1, SimMode::Graph).latency_us;
    assert!((one - 69.5).abs() < 0.1 * 69.5, "{one}");
    assert!((eight - 18.4).abs() < 0.15 * 18.4, "{eight}");
    let eager = simulate(&g, &Plan::single(&g), &cost, 1, SimMode::Eager).latency_us;
    assert!((eager - 90.6).abs() < 0.15 * 90.6, "{eager}");
    // At batch 4096 with the measured one-stream time per bag (287 us / 26), four streams
    // overlap the gathers: 157 us measured.
    let mut m = MeasuredCosts::default();
    for op in g.ops() {
        m.insert(&op.name, 4096, (287.0 - 8.7) / 26.0);
    }
    let cost = cost.with_measured(m);
    let one = simulate(&g, &Plan::single(&g), &cost, 4096, SimMode::Eager).latency_us;
    let lists: Vec<Vec<usize>> = (0..4)
        .map(|s| (0..26).filter(|i| i % 4 == s).collect())
        .collect();
    let four = Plan::from_streams(&g, "t", lists).unwrap();
    let four = simulate(&g, &four, &cost, 4096, SimMode::Eager).latency_us;
    assert!((one - 287.0).abs() < 0.1 * 287.0, "{one}");
    assert!((four - 157.0).abs() < 0.25 * 157.0, "{four}");
    println!("26 bags on h200: graph batch 1 {eight:.1} us; eager batch 4096 one stream {one:.1}, four {four:.1}");
}

#[test]
fn measured_slow_kernels_leave_room_for_others() {
    // Two independent ops that each fill the toy device (100 us alone), measured at 200 us: each
    // is taken to use half of it, so on two streams they overlap.
    let g = OpGraph::synthetic(2, &[], &[(1e3, 0.0), (1e3, 0.0)]).unwrap();
    let mut m = MeasuredCosts::default();
    m.insert("op0", 1, 200.0);
    m.insert("op1", 1, 200.0);
    let cost = CostModel::new(toy()).with_measured(m);
    assert_eq!(cost.op_units(&g, 0, 1), 5.0);
    let plan = Plan::from_streams(&g, "t", vec![vec![0], vec![1]]).unwrap();
    let multi = simulate(&g, &plan, &cost, 1, SimMode::Graph).latency_us;
    let single = simulate(&g, &Plan::single(&g), &cost, 1, SimMode::Graph).latency_us;
    assert!(close(single, 3.0 + 2.0 * 200.5 + 5.0), "{single}");
    assert!(multi < 215.0, "{multi}");
}
