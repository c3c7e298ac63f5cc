//! report.md, the CSV files and the terminal tables of `cargo xtask bench`, and the ONNX Runtime
//! peer's rows (shared with `cargo xtask peer`).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::common::today;

/// The header of peer.csv.
pub(crate) const PEER_CSV_HEADER: &str = "model,batch,streamrec_best_config,streamrec_best_p50_us,streamrec_auto_p50_us,onnxruntime_best_setting,onnxruntime_p50_us,onnxruntime_settings_p50_us,streamrec_best_to_ort,streamrec_auto_to_ort,streamrec_best_to_ort_per_round,streamrec_auto_to_ort_per_round,ort_max_abs_error\n";

/// The header of the ONNX Runtime peer table.
pub(crate) const PEER_HEADER: &str = "model          batch  StreamRec best config     p50 us   auto p50 us  ORT setting      ORT p50 us  best/ORT  auto/ORT  best/ORT per round  auto/ORT per round  max |err|\n";

/// StreamRec's side of the peer table at one batch size.
#[derive(Clone, Debug, Default)]
pub(crate) struct BestRow {
    pub(crate) batch: usize,
    /// The fastest configuration, and its p50 (the median over the rounds).
    pub(crate) config: String,
    pub(crate) p50: f64,
    /// Measured `auto`'s p50.
    pub(crate) auto: Option<f64>,
    /// The p50 of each round, in order: the fastest configuration's and `auto`'s.
    pub(crate) best_rounds: Vec<f64>,
    pub(crate) auto_rounds: Vec<f64>,
}

/// `a / b` round by round, for two series timed in the same interleaved rounds (as many rounds
/// as both have): the ratio's own spread, where the two sides saw the same host in each round.
fn per_round(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x / y).collect()
}

/// `min-max` of per-round ratios, or `-` without any.
fn ratio_range(v: &[f64]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.2}-{hi:.2}x")
}

/// Adds one model's peer rows (one per batch size) to peer.csv and the table.
pub(crate) fn peer_rows(
    model: &str,
    best_rows: &[BestRow],
    outcome: &crate::peer::PeerOutcome,
    csv: &mut String,
    table: &mut String,
) {
    let crate::peer::PeerOutcome::Timed {
        batches,
        max_abs_error,
        version,
    } = outcome
    else {
        if let crate::peer::PeerOutcome::Skipped(why) = outcome {
            let _ = writeln!(table, "{model:<13} skipped: {why}");
        }
        return;
    };
    for row in best_rows {
        let (b, cfg, p50, auto) = (&row.batch, &row.config, &row.p50, &row.auto);
        let Some(ort) = batches.iter().find(|x| x.batch == *b) else {
            continue;
        };
        let best_per_round = per_round(&row.best_rounds, &ort.rounds);
        let auto_per_round = per_round(&row.auto_rounds, &ort.rounds);
        let joined = |v: &[f64]| {
            v.iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(";")
        };
        let settings: Vec<String> = ort
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v:.1}"))
            .collect();
        let ratio = p50 / ort.p50_us;
        let auto_ratio = auto.map(|a| a / ort.p50_us);
        let opt = |v: Option<f64>, prec: usize| v.map_or(String::new(), |v| format!("{v:.prec$}"));
        let _ = writeln!(
            csv,
            "{model},{b},{cfg},{p50:.1},{},{},{:.1},{},{ratio:.3},{},{},{},{max_abs_error:.3e}",
            opt(*auto, 1),
            ort.best,
            ort.p50_us,
            settings.join(";"),
            opt(auto_ratio, 3),
            joined(&best_per_round),
            joined(&auto_per_round),
        );
        let _ = writeln!(
            table,
            "{model:<13} {b:>6}  {cfg:<22} {p50:>10.1} {:>13}  {:<14} {:>10.1} {ratio:>8.2}x {:>9} {:>19} {:>19} {max_abs_error:>10.2e}",
            opt(*auto, 1),
            ort.best,
            ort.p50_us,
            auto_ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            ratio_range(&best_per_round),
            ratio_range(&auto_per_round),
        );
    }
    let _ = writeln!(
        table,
        "{model:<13} onnxruntime {version}: every score within {max_abs_error:.2e} of the engine's"
    );
}

/// What the engine experiments accumulate over every model: the CSV files, the terminal tables
/// and what report.md links to.
pub(crate) struct Tables {
    /// engine.csv, and its terminal table.
    pub(crate) csv: String,
    pub(crate) table: String,
    /// prediction.csv, and its terminal table.
    pub(crate) pred_csv: String,
    pub(crate) pred_table: String,
    /// noise.txt.
    pub(crate) noise_table: String,
    /// What measured `auto` picked, one line per model and batch size.
    pub(crate) auto_lines: Vec<String>,
    /// The plan views: (model, file name).
    pub(crate) pages: Vec<(String, String)>,
    /// peer.csv, and its terminal table.
    pub(crate) peer_csv: String,
    pub(crate) peer_table: String,
}

impl Tables {
    pub(crate) fn new() -> Self {
        Tables {
            csv: String::from("model,batch,algo,streams_max,streams,waits,p50_us,p99_us,samples_per_s,ratio_p50_to_single,ratio_throughput_to_single,noise_floor,verdict,predicted_ratio\n"),
            table: String::new(),
            pred_csv: String::from("model,batch,algo,streams,measured_single_us,measured_us,measured_ratio,predicted_single_us,predicted_us,predicted_ratio,noise_floor,within_25pct\n"),
            pred_table: String::new(),
            noise_table: String::new(),
            auto_lines: Vec::new(),
            pages: Vec::new(),
            peer_csv: String::from(PEER_CSV_HEADER),
            peer_table: String::new(),
        }
    }
}

/// Writes engine.csv, prediction.csv and noise.txt.
pub(crate) fn write_tables(out: &Path, t: &Tables) -> Result<()> {
    std::fs::write(out.join("engine.csv"), &t.csv)?;
    std::fs::write(out.join("prediction.csv"), &t.pred_csv)?;
    std::fs::write(out.join("noise.txt"), &t.noise_table)?;
    Ok(())
}

/// report.md's engine sections: the plan views, noise floors, the engine table and the
/// prediction table.
pub(crate) fn engine_report(quick: bool, t: &Tables) -> String {
    let mut report = format!(
        "# CPU engine experiments ({})\n\nWritten by `cargo xtask bench`{}. Every ratio is against \
         `single` measured in the same run; a ratio within the noise floor (the spread of p50 over \
         the repeated, identical `single` runs) is \"no difference\".\n\n## Plan views\n\n",
        today(),
        if quick { " --quick" } else { "" }
    );
    for (model, page) in &t.pages {
        let _ = writeln!(
            report,
            "- [{model}]({page}): the operator graph by stream, simulated timelines (eager and \
             graph mode) and every algorithm side by side, at batch 128 and K = 4"
        );
    }
    let _ = write!(
        report,
        "\n## Noise floors\n\n```\n{}```\n\n## Engine (p50/p99 latency, throughput, \
         ratio to single)\n\nSee [engine.csv](engine.csv). The `auto` rows are measured `auto`, \
         the default of `run` and `serve`, chosen afresh in this run:\n\n```\n{}\n```\n\n\
         ```\n{}```\n\n## Measured \
         vs simulated speed-up on 2, 4 and 8 streams\n\n```\n{}```\n\nAlso: \
         [contexts.csv](contexts.csv), [threads.csv](threads.csv), \
         [prediction.csv](prediction.csv), [cpu-profile.toml](cpu-profile.toml).\n",
        t.noise_table,
        t.auto_lines.join("\n"),
        t.table,
        t.pred_table
    );
    report
}

/// Writes peer.csv and adds report.md's ONNX Runtime section.
pub(crate) fn peer_report(out: &Path, t: &Tables, report: &mut String) -> Result<()> {
    std::fs::write(out.join("peer.csv"), &t.peer_csv)?;
    let _ = write!(
        report,
        "\n## ONNX Runtime peer\n\nThe same model and weights exported to ONNX \
         (`tools/onnx_peer.py`: Gather + ReduceSum/ReduceMean, Gemm + Relu, Concat), its scores \
         checked against the engine's within {:e}, and timed with its best thread setting in \
         this run. A ratio is StreamRec's p50 over ORT's (below 1: StreamRec is faster), the median \
         of each side over its rounds; per round: the ratio within each round (ORT's timing \
         follows the engine's in every round), min-max, its spread on this host. See \
         [peer.csv](peer.csv) and [machine.txt](machine.txt).\n\n```\n{}{}```\n",
        crate::peer::TOLERANCE,
        PEER_HEADER,
        t.peer_table
    );
    Ok(())
}

/// The tables on the terminal, and what was written.
pub(crate) fn print_tables(out: &Path, t: &Tables, peer: bool) {
    println!("noise floors (spread of p50 over the repeated single-stream runs):");
    print!("{}", t.noise_table);
    println!();
    println!(
        "{:<13} {:>5} {:>13} {:>2} {:>3} {:>5} {:>11} {:>11} {:>12} {:>8} {:>13} {:>8}",
        "model",
        "batch",
        "algo",
        "K",
        "str",
        "waits",
        "p50 us",
        "p99 us",
        "samples/s",
        "vs single",
        "verdict",
        "predicted"
    );
    print!("{}", t.table);
    println!("\nmulti-stream speed-up on 2, 4 and 8 streams, measured vs simulated (cpu profile calibrated in this run):");
    print!("{}", t.pred_table);
    if peer {
        println!(
            "\nONNX Runtime peer (ratio: StreamRec p50 / ORT p50; below 1 StreamRec is faster):"
        );
        print!("{PEER_HEADER}{}", t.peer_table);
    }
    println!(
        "\nwrote {}/report.md, plan-*.html, engine.csv, prediction.csv, noise.txt, contexts.csv, threads.csv, cpu-profile.toml",
        out.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::{PeerBatch, PeerOutcome};
    use std::collections::BTreeMap;

    #[test]
    fn peer_rows_give_each_rounds_ratio_beside_the_medians() {
        let ort = PeerOutcome::Timed {
            batches: vec![PeerBatch {
                batch: 128,
                best: "intra2".into(),
                p50_us: 1000.0,
                settings: BTreeMap::from([("intra2".into(), 1000.0), ("intra1".into(), 1500.0)]),
                rounds: vec![1000.0, 800.0, 1250.0],
            }],
            max_abs_error: 3e-8,
            version: "1.0".into(),
        };
        let row = BestRow {
            batch: 128,
            config: "single x1".into(),
            p50: 650.0,
            auto: Some(700.0),
            best_rounds: vec![650.0, 560.0, 750.0],
            auto_rounds: vec![700.0, 600.0],
        };
        let (mut csv, mut table) = (String::from(PEER_CSV_HEADER), String::new());
        peer_rows("m", &[row], &ort, &mut csv, &mut table);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2, "{csv}");
        let head: Vec<&str> = lines[0].split(',').collect();
        let cells: Vec<&str> = lines[1].split(',').collect();
        assert_eq!(head.len(), cells.len(), "{csv}");
        let cell = |name: &str| cells[head.iter().position(|h| *h == name).unwrap()];
        assert_eq!(cell("streamrec_best_to_ort"), "0.650");
        assert_eq!(cell("streamrec_auto_to_ort"), "0.700");
        // Round by round: 650/1000, 560/800, 750/1250; auto has two rounds.
        assert_eq!(cell("streamrec_best_to_ort_per_round"), "0.650;0.700;0.600");
        assert_eq!(cell("streamrec_auto_to_ort_per_round"), "0.700;0.750");
        assert!(table.contains("0.60-0.70x"), "{table}");
        assert!(table.contains("0.70-0.75x"), "{table}");
        // No rounds (a one-shot timing): a dash, not a made-up range.
        assert_eq!(ratio_range(&[]), "-");
    }
}
