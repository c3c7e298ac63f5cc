//! The Zipf exponent of `--skew zipf:production`, fitted to the production locality statistics
//! shipped in workloads/traces/ (facebookresearch/dlrm_datasets 2021 and 2022): the recorded
//! constant is the fit, and the fit's error is what workloads/traces/README.md says.

use std::path::Path;

mod locality;

use locality::{expected_cdfs, fit, parse, BINS};
use streamrec_loadgen::PRODUCTION_ZIPF;

#[test]
fn production_zipf_exponent_is_the_fit() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workloads/traces");
    let mut blocks = Vec::new();
    for year in [2021, 2022] {
        let p = dir.join(format!("dlrm-datasets-{year}-locality-stats.txt"));
        let b = parse(&std::fs::read_to_string(&p).unwrap()).unwrap();
        println!(
            "{year}: {} batches, {:.0} indices per table per batch",
            b.len(),
            b.iter().map(|x| x.indices_per_table()).sum::<f64>() / b.len() as f64
        );
        blocks.extend(b);
    }
    assert_eq!(blocks.len(), 33);
    // Rows per table from 10^5 to 10^8 in steps of 10^0.25, then by 10^0.05 around the best.
    let grid = |lo: f64, step: f64, n: i32| -> Vec<u64> {
        (0..n)
            .map(|i| 10f64.powf(lo + step * f64::from(i)).round() as u64)
            .collect()
    };
    let coarse = fit(&blocks, &grid(5.0, 0.25, 13));
    for f in &coarse {
        println!(
            "rows {:>11}: s = {:.3}, KS distance mean {:.4} max {:.4}",
            f.rows, f.s, f.mean_error, f.max_error
        );
    }
    let centre = (coarse[0].rows as f64).log10();
    let fine = fit(&blocks, &grid((centre - 0.2).max(5.0), 0.05, 9));
    for f in &fine {
        println!(
            "rows {:>11}: s = {:.3}, KS distance mean {:.4} max {:.4}",
            f.rows, f.s, f.mean_error, f.max_error
        );
    }
    let best = &fine[0];
    println!(
        "best: s = {:.3} over {} rows (PRODUCTION_ZIPF = {PRODUCTION_ZIPF})",
        best.s, best.rows
    );
    let (u, i) = expected_cdfs(best.s, best.rows, blocks[0].indices_per_table());
    println!(
        "bin  unique(model, data)  index(model, data)  [{}]",
        blocks[0].name
    );
    for k in 0..BINS {
        println!(
            "{k:>3}  {:.3} {:.3}          {:.3} {:.3}",
            u[k], blocks[0].unique_cdf[k], i[k], blocks[0].index_cdf[k]
        );
    }
    assert!(
        (best.s - PRODUCTION_ZIPF).abs() <= 0.0051,
        "the fit gives {:.3}, PRODUCTION_ZIPF is {PRODUCTION_ZIPF}",
        best.s
    );
    // A single Zipf law is a rough summary of 800+ tables: about 0.12 (workloads/traces/README.md).
    assert!(best.mean_error < 0.13, "{}", best.mean_error);
}
