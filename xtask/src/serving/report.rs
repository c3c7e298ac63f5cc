//! serving.md, the serving CSV files, the SVG plots and the terminal summary of the serving
//! experiment (`cargo xtask serving`, and the serving section of `cargo xtask bench`).

use std::fmt::Write as _;

use anyhow::Result;
use streamrec_runtime::stats::median;

use super::{
    verdict, Measured, Opts, Point, Schedules, PUBLISHED_LATENCY_REDUCTION,
    PUBLISHED_THROUGHPUT_GAIN,
};
use crate::common::spread;
use crate::plots;

/// serving.csv: every measured point.
pub(crate) fn points_csv(points: &[Point]) -> String {
    let mut csv = String::from(
        "phase,pass_or_round,schedule,plan,target_qps,offered_qps,achieved_qps,samples_per_s,requests,failed,p50_us,p90_us,p99_us,p999_us,max_us,within_bound\n",
    );
    for p in points {
        let _ = writeln!(
            csv,
            "{},{},{},{},{:.1},{:.1},{:.1},{:.1},{},{},{},{},{},{},{},{}",
            p.phase,
            p.pass + 1,
            p.schedule,
            p.plan,
            p.qps,
            p.offered,
            p.achieved,
            p.samples_per_s,
            p.requests,
            p.failed,
            p.p50,
            p.p90,
            p.p99,
            p.p999,
            p.max,
            p.ok
        );
    }
    csv
}

/// serving.md's heading and method, with each server's plan line (single, auto).
pub(crate) fn intro(o: &Opts, model: &str, resolution: f64, plan_lines: [&str; 2]) -> String {
    format!(
        "## Serving: single-stream vs auto behind `streamrec serve`\n\n\
         {model} with {} sample(s) per request (`--serve-batch`), served by `streamrec serve --algo single` and \
         `--algo auto` (each its own process{}), driven open-loop over loopback by the load \
         generator ({}, latency from the intended send time). Max QPS: the largest \
         offered rate whose p99 stays under {} ms with no failed request and the achieved rate \
         within 2% of the offered, a failing point measured again and over only if it fails twice \
         (sweep from {} req/s by x{}, {} bisection step(s): resolution {:.1}%; {} pass(es)). Common load: half the single plan's max QPS, {} interleaved \
         round(s) of {} s.\n\n- single: `{}`\n- auto: `{}`\n\n",
        o.batch,
        if o.server_args.is_empty() {
            String::new()
        } else {
            format!(", `{}`", o.server_args.join(" "))
        },
        match o.protocol {
            streamrec_loadgen::Protocol::Http => "HTTP/1.1, binary bodies",
            streamrec_loadgen::Protocol::Grpc =>
                "KServe v2 gRPC `ModelInfer` with raw contents over 4 HTTP/2 connections \
                 (`--serve-protocol grpc`)",
        },
        o.p99_ms,
        o.start_qps,
        o.growth,
        o.refine,
        resolution * 100.0,
        o.passes,
        o.rounds,
        o.secs,
        plan_lines[0].trim(),
        plan_lines[1].trim()
    )
}

/// The summary table (added to serving.md), one row per schedule; returns serving-summary.csv
/// and the headline (Poisson).
pub(crate) fn summary(
    o: &Opts,
    schedules: &Schedules,
    m: &Measured,
    resolution: f64,
    md: &mut String,
) -> (String, String) {
    let _ = writeln!(
        md,
        "| schedule | single max QPS | auto max QPS | throughput gain | noise floor | verdict | common load | single p50 / p99 us | auto p50 / p99 us | p50 latency reduction | p99 latency reduction | noise floor | verdict |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut headline = String::new();
    let mut summary_csv = String::from("schedule,single_max_qps,auto_max_qps,throughput_gain,throughput_noise_floor,throughput_verdict,common_qps,single_p50_us,single_p99_us,auto_p50_us,auto_p99_us,p50_latency_reduction,p99_latency_reduction,latency_noise_floor,latency_verdict,samples_per_request,single_max_samples_per_s,auto_max_samples_per_s\n");
    for (si, (sn, _)) in schedules.iter().enumerate() {
        let row = Row::new(&m.maxes[si], &m.common[si], resolution);
        row.md_row(sn, md);
        row.csv_row(sn, &mut summary_csv);
        if si == 0 {
            headline = row.headline(o);
        }
    }
    (summary_csv, headline)
}

/// One schedule's summary: max QPS and the throughput gain, latency at the common load and
/// its reduction, each with its noise floor and verdict.
struct Row {
    smax: f64,
    amax: f64,
    /// Samples per request (answered samples over answered requests at the common load):
    /// max QPS times it is the max throughput in samples/s.
    per_req: f64,
    gain: f64,
    t_noise: f64,
    t_verdict: String,
    q: f64,
    s50: f64,
    s99: f64,
    a50: f64,
    a99: f64,
    red50: f64,
    red99: f64,
    l_noise: f64,
    l_verdict: String,
}

impl Row {
    fn new(maxes: &[Vec<Option<f64>>], common: &(f64, [Vec<Point>; 2]), resolution: f64) -> Row {
        let m = |pl: usize| -> Vec<f64> { maxes[pl].iter().flatten().copied().collect() };
        let (ms, ma) = (m(0), m(1));
        let (smax, amax) = (median(&ms), median(&ma));
        let gain = amax / smax - 1.0;
        let t_noise = resolution.max(spread(&ms)).max(spread(&ma));
        let t_verdict = verdict(gain, t_noise, "auto higher", "auto lower");
        let (q, got) = common;
        let (samples, answered) = got.iter().flatten().fold((0.0, 0.0), |(s, a), p| {
            (s + p.samples_per_s, a + p.achieved)
        });
        let per_req = if answered > 0.0 {
            samples / answered
        } else {
            1.0
        };
        let pct = |pl: usize, f: fn(&Point) -> u64| -> f64 {
            median(&got[pl].iter().map(|p| f(p) as f64).collect::<Vec<_>>())
        };
        let (s50, s99, a50, a99) = (
            pct(0, |p| p.p50),
            pct(0, |p| p.p99),
            pct(1, |p| p.p50),
            pct(1, |p| p.p99),
        );
        let red50 = 1.0 - a50 / s50;
        let red99 = 1.0 - a99 / s99;
        let l_noise = spread(&got[0].iter().map(|p| p.p50 as f64).collect::<Vec<_>>()).max(spread(
            &got[1].iter().map(|p| p.p50 as f64).collect::<Vec<_>>(),
        ));
        // One round has no round-to-round spread: no floor, so no verdict either.
        let l_verdict = if !red50.is_finite() {
            "not measured".to_string()
        } else if got[0].len().min(got[1].len()) < 2 {
            "undecided (one round: no noise floor)".to_string()
        } else {
            verdict(red50, l_noise, "auto lower", "auto higher")
        };
        Row {
            smax,
            amax,
            per_req,
            gain,
            t_noise,
            t_verdict,
            q: *q,
            s50,
            s99,
            a50,
            a99,
            red50,
            red99,
            l_noise,
            l_verdict,
        }
    }

    /// The row of serving.md's table.
    fn md_row(&self, sn: &str, md: &mut String) {
        let fmt = |x: f64| {
            if x.is_finite() {
                format!("{x:.0}")
            } else {
                "-".into()
            }
        };
        let with_samples = |x: f64| {
            if x.is_finite() && (self.per_req - 1.0).abs() > 1e-9 {
                format!("{} ({} samples/s)", fmt(x), fmt(x * self.per_req))
            } else {
                fmt(x)
            }
        };
        let _ = writeln!(
            md,
            "| {sn} | {} | {} | {:+.1}% | {:.1}% | {} | {:.0} req/s | {} / {} | {} / {} | {:+.1}% | {:+.1}% | {:.1}% | {} |",
            with_samples(self.smax),
            with_samples(self.amax),
            self.gain * 100.0,
            self.t_noise * 100.0,
            self.t_verdict,
            self.q,
            fmt(self.s50),
            fmt(self.s99),
            fmt(self.a50),
            fmt(self.a99),
            self.red50 * 100.0,
            self.red99 * 100.0,
            self.l_noise * 100.0,
            self.l_verdict
        );
    }

    /// The row of serving-summary.csv.
    fn csv_row(&self, sn: &str, csv: &mut String) {
        let c = |x: f64, d: usize| {
            if x.is_finite() {
                format!("{x:.d$}")
            } else {
                String::new()
            }
        };
        let _ = writeln!(
            csv,
            "{sn},{},{},{},{:.4},{},{:.1},{},{},{},{},{},{},{:.4},{},{:.2},{},{}",
            c(self.smax, 1),
            c(self.amax, 1),
            c(self.gain, 4),
            self.t_noise,
            self.t_verdict,
            self.q,
            c(self.s50, 0),
            c(self.s99, 0),
            c(self.a50, 0),
            c(self.a99, 0),
            c(self.red50, 4),
            c(self.red99, 4),
            self.l_noise,
            self.l_verdict,
            self.per_req,
            c(self.smax * self.per_req, 0),
            c(self.amax * self.per_req, 0)
        );
    }

    /// The headline sentence, beside the published figures.
    fn headline(&self, o: &Opts) -> String {
        format!(
            "Headline (Poisson): latency reduction at {:.0} req/s {:+.1}% at p50 ({}, noise floor {:.1}%; published: {:.1}%), throughput gain at p99 <= {} ms {:+.1}% ({}, noise floor {:.1}%; published: {:.0}%).",
            self.q,
            self.red50 * 100.0,
            self.l_verdict,
            self.l_noise * 100.0,
            PUBLISHED_LATENCY_REDUCTION * 100.0,
            o.p99_ms,
            self.gain * 100.0,
            self.t_verdict,
            self.t_noise * 100.0,
            PUBLISHED_THROUGHPUT_GAIN * 100.0
        )
    }
}

/// The three plots (latency vs offered QPS per schedule, max QPS, the latency CDF at the
/// common load), each linked from serving.md.
pub(crate) fn plots(
    o: &Opts,
    model: &str,
    schedules: &Schedules,
    points: &[Point],
    m: &Measured,
    md: &mut String,
) -> Result<()> {
    let bound_us = o.p99_ms * 1000.0;
    for (sn, _) in schedules {
        let file = format!("serving-latency-vs-qps-{sn}.svg");
        plots::latency_vs_qps(
            &o.out.join(&file),
            &format!("{model}: latency vs offered load ({sn})"),
            &points
                .iter()
                .filter(|p| p.schedule == *sn && p.failed == 0)
                .map(|p| (p.plan, p.offered, p.p50 as f64, p.p99 as f64))
                .collect::<Vec<_>>(),
            bound_us,
        )?;
        let _ = writeln!(md, "![latency percentiles vs offered QPS, {sn}]({file})\n");
    }
    let bars: Vec<(String, f64, f64)> = schedules
        .iter()
        .enumerate()
        .map(|(si, (sn, _))| {
            let m = |pl: usize| {
                median(
                    &m.maxes[si][pl]
                        .iter()
                        .flatten()
                        .copied()
                        .collect::<Vec<_>>(),
                )
            };
            (sn.to_string(), m(0), m(1))
        })
        .collect();
    plots::throughput_bars(
        &o.out.join("serving-throughput.svg"),
        &format!("{model}: max QPS with p99 <= {} ms", o.p99_ms),
        &bars,
    )?;
    let _ = writeln!(
        md,
        "![max QPS under the p99 bound](serving-throughput.svg)\n"
    );
    plots::latency_cdf(
        &o.out.join("serving-latency-cdf.svg"),
        &format!(
            "{model}: latency CDF at {:.0} req/s (Poisson)",
            m.common[0].0
        ),
        &[("single", &m.cdf[0]), ("auto", &m.cdf[1])],
    )?;
    let _ = writeln!(
        md,
        "![latency CDF at the common load](serving-latency-cdf.svg)\n"
    );
    Ok(())
}

/// The summary CSV as an aligned text table for the terminal.
pub(crate) fn summary_table(csv: &str) -> String {
    let mut out = String::new();
    for (i, line) in csv.lines().enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        if i == 0 {
            let _ = writeln!(
                out,
                "{:<8} {:>10} {:>10} {:>8} {:>16} {:>10} {:>14} {:>14} {:>9} {:>16} {:>12} {:>12}",
                "schedule",
                "single max",
                "auto max",
                "gain",
                "(verdict)",
                "common",
                "single p50/p99",
                "auto p50/p99",
                "p50 red.",
                "(verdict)",
                "single sm/s",
                "auto sm/s"
            );
            continue;
        }
        let pct = |s: &str| {
            s.parse::<f64>()
                .map_or("-".into(), |x| format!("{:+.1}%", x * 100.0))
        };
        let f: Vec<&str> = f
            .iter()
            .map(|x| if x.is_empty() { "-" } else { x })
            .collect();
        let _ = writeln!(
            out,
            "{:<8} {:>10} {:>10} {:>8} {:>16} {:>10} {:>14} {:>14} {:>9} {:>16} {:>12} {:>12}",
            f[0],
            f[1],
            f[2],
            pct(f[3]),
            f[5],
            f[6],
            format!("{}/{}", f[7], f[8]),
            format!("{}/{}", f[9], f[10]),
            pct(f[11]),
            f[14],
            f.get(16).copied().unwrap_or("-"),
            f.get(17).copied().unwrap_or("-")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_table_shows_missing_figures_as_dashes() {
        let csv = "h\npoisson,100.0,,,0.1,not measured,50.0,10,20,,,,,0.0,not measured\n";
        let t = summary_table(csv);
        let row = t.lines().nth(1).unwrap();
        assert!(row.starts_with("poisson"), "{t}");
        assert!(
            row.contains("100.0") && row.contains(" - ") && row.contains("10/20"),
            "{t}"
        );
    }

    fn point(plan: &'static str, achieved: f64, samples: f64) -> Point {
        Point {
            phase: "common",
            pass: 0,
            schedule: "poisson",
            plan,
            qps: achieved,
            offered: achieved,
            achieved,
            samples_per_s: samples,
            requests: 100,
            failed: 0,
            p50: 1000,
            p90: 2000,
            p99: 3000,
            p999: 4000,
            max: 5000,
            ok: true,
        }
    }

    #[test]
    fn max_throughput_is_given_in_samples_too() {
        // Requests of 270 samples on average: max QPS 100 and 150 are 27,000 and 40,500
        // samples/s.
        let maxes = vec![vec![Some(100.0)], vec![Some(150.0)]];
        let common = (
            50.0,
            [
                vec![point("single", 50.0, 13_000.0)],
                vec![point("auto", 50.0, 14_000.0)],
            ],
        );
        let row = Row::new(&maxes, &common, 0.1);
        let (mut md, mut csv) = (String::new(), String::new());
        row.md_row("poisson", &mut md);
        row.csv_row("poisson", &mut csv);
        assert!(
            md.contains("| 100 (27000 samples/s) | 150 (40500 samples/s) |"),
            "{md}"
        );
        assert!(csv.trim_end().ends_with(",270.00,27000,40500"), "{csv}");
        let t = summary_table(&format!("h\n{csv}"));
        assert!(t.contains("27000") && t.contains("40500"), "{t}");
        // One sample per request: the table shows requests/s alone.
        let common = (
            50.0,
            [
                vec![point("single", 50.0, 50.0)],
                vec![point("auto", 50.0, 50.0)],
            ],
        );
        let mut md = String::new();
        Row::new(&maxes, &common, 0.1).md_row("poisson", &mut md);
        assert!(md.contains("| 100 | 150 |"), "{md}");
    }
}
