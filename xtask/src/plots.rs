//! SVG plots of the serving experiment, drawn with plotters: latency percentiles against offered
//! QPS per plan, max-QPS bars, and a latency CDF.

use std::path::Path;

use anyhow::{anyhow, Result};
use hdrhistogram::Histogram;
use plotters::prelude::*;

const W: u32 = 800;
const H: u32 = 480;

fn color(plan: &str) -> RGBColor {
    match plan {
        "single" => RGBColor(0x44, 0x77, 0xaa),
        _ => RGBColor(0xee, 0x66, 0x77),
    }
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e:?}")
}

/// The series labels in a box at `pos`.
fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    pos: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .position(pos)
        .draw()
        .map_err(err)
}

/// Tick values for a log axis over `[lo, hi]`: 1, 2 and 5 times the powers of ten inside it,
/// refined (1, 1.5, 2, 3, 5, 7) when that gives fewer than four, so that an axis spanning less
/// than a decade still reads.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let within = |mults: &[f64]| -> Vec<f64> {
        let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
        (e0..=e1)
            .flat_map(|e| mults.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|v| *v >= lo && *v <= hi)
            .collect()
    };
    let coarse = within(&[1.0, 2.0, 5.0]);
    if coarse.len() >= 4 {
        coarse
    } else {
        within(&[1.0, 1.5, 2.0, 3.0, 5.0, 7.0])
    }
}

/// The median of `v` (not empty).
fn mid(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// p50 (solid) and p99 (dashed) latency against offered QPS, one colour per plan, log-log, with
/// the p99 bound as a horizontal line. `points`: (plan, offered QPS, p50 us, p99 us); every
/// point is a dot, and the lines join, in order of offered load, the medians of the points
/// measured at one load (rounds), so repeated loads draw no zig-zag.
pub fn latency_vs_qps(
    path: &Path,
    title: &str,
    points: &[(&str, f64, f64, f64)],
    bound_us: f64,
) -> Result<()> {
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let xs = points.iter().map(|p| p.1).filter(|x| *x > 0.0);
    let (x0, x1) = xs.fold((f64::INFINITY, 0.0f64), |(a, b), x| (a.min(x), b.max(x)));
    let (x0, x1) = if x0.is_finite() && x1 > x0 {
        (x0 / 1.2, x1 * 1.2)
    } else {
        (1.0, 10.0)
    };
    let ys = points
        .iter()
        .flat_map(|p| [p.2, p.3])
        .chain([bound_us])
        .filter(|y| *y > 0.0);
    let (y0, y1) = ys.fold((f64::INFINITY, 0.0f64), |(a, b), y| (a.min(y), b.max(y)));
    let (y0, y1) = (y0.max(1.0) / 1.5, y1.max(2.0) * 1.5);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (x0..x1).log_scale().with_key_points(log_ticks(x0, x1)),
            (y0..y1).log_scale().with_key_points(log_ticks(y0, y1)),
        )
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(24)
        .y_labels(24)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .x_desc("offered load (requests/s)")
        .y_desc("latency (us)")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            [(x0, bound_us), (x1, bound_us)],
            RGBColor(0x22, 0x88, 0x33).stroke_width(3),
        ))
        .map_err(err)?
        .label("p99 bound")
        .legend(|(x, y)| {
            PathElement::new(
                [(x, y), (x + 20, y)],
                RGBColor(0x22, 0x88, 0x33).stroke_width(3),
            )
        });
    for plan in ["single", "auto"] {
        let mut mine: Vec<(f64, f64, f64)> = points
            .iter()
            .filter(|p| p.0 == plan)
            .map(|p| (p.1, p.2, p.3))
            .collect();
        mine.sort_by(|a, b| a.0.total_cmp(&b.0));
        // One point per offered load (within 0.5%): the medians of its rounds.
        let mut line: Vec<(f64, f64, f64)> = Vec::new();
        let mut i = 0;
        while i < mine.len() {
            let j = i + mine[i..]
                .iter()
                .take_while(|p| p.0 <= mine[i].0 * 1.005)
                .count();
            let g = &mine[i..j];
            line.push((
                mid(g.iter().map(|p| p.0).collect()),
                mid(g.iter().map(|p| p.1).collect()),
                mid(g.iter().map(|p| p.2).collect()),
            ));
            i = j;
        }
        let c = color(plan);
        chart
            .draw_series(LineSeries::new(
                line.iter().map(|p| (p.0, p.1.max(1.0))),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("{plan} p50"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(DashedLineSeries::new(
                line.iter().map(|p| (p.0, p.2.max(1.0))),
                6,
                4,
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("{plan} p99"))
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 20, y)], c.mix(0.6).stroke_width(1))
            });
        chart
            .draw_series(
                mine.iter()
                    .flat_map(|p| [(p.0, p.1.max(1.0)), (p.0, p.2.max(1.0))])
                    .map(|xy| Circle::new(xy, 3, c.filled())),
            )
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    root.present().map_err(err)?;
    Ok(())
}

/// Max QPS per schedule, a bar per plan. `bars`: (schedule, single, auto).
pub fn throughput_bars(path: &Path, title: &str, bars: &[(String, f64, f64)]) -> Result<()> {
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let top = bars
        .iter()
        .flat_map(|b| [b.1, b.2])
        .filter(|x| x.is_finite())
        .fold(1.0f64, f64::max)
        * 1.2;
    let n = bars.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..(3 * n) as f64, 0.0..top)
        .map_err(err)?;
    let names: Vec<String> = bars.iter().map(|b| b.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(3 * n + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - (3 * (i / 3)) as f64 - 1.0).abs() < 0.01 {
                names.get(i / 3).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|y| format!("{y:.0}"))
        .y_desc("max QPS within the p99 bound")
        .draw()
        .map_err(err)?;
    for (pi, plan) in ["single", "auto"].into_iter().enumerate() {
        let c = color(plan);
        chart
            .draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
                let v = if pi == 0 { b.1 } else { b.2 };
                let x = (3 * i + pi) as f64 + 0.1;
                v.is_finite()
                    .then(|| Rectangle::new([(x, 0.0), (x + 0.8, v)], c.filled()))
            }))
            .map_err(err)?
            .label(plan)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
        chart
            .draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
                let v = if pi == 0 { b.1 } else { b.2 };
                let x = (3 * i + pi) as f64 + 0.5;
                v.is_finite().then(|| {
                    Text::new(
                        format!("{v:.0}"),
                        (x - 0.25, v + top * 0.02),
                        ("sans-serif", 14),
                    )
                })
            }))
            .map_err(err)?;
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)?;
    root.present().map_err(err)?;
    Ok(())
}

/// The cumulative distribution of latency per plan, log latency axis.
pub fn latency_cdf(path: &Path, title: &str, hists: &[(&str, &Histogram<u64>)]) -> Result<()> {
    let root = SVGBackend::new(path, (W, H)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let nonempty = || hists.iter().filter(|h| !h.1.is_empty());
    let x0 = nonempty().map(|h| h.1.min()).min().unwrap_or(1).max(1) as f64 / 1.2;
    let x1 = nonempty().map(|h| h.1.max()).max().unwrap_or(10).max(2) as f64 * 1.2;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((x0..x1).log_scale(), 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(8)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .x_desc("latency (us)")
        .y_desc("fraction of requests")
        .draw()
        .map_err(err)?;
    for (plan, h) in hists {
        if h.is_empty() {
            continue;
        }
        let c = color(plan);
        let n = h.len() as f64;
        let mut seen = 0u64;
        let pts: Vec<(f64, f64)> = h
            .iter_recorded()
            .map(|v| {
                seen += v.count_at_value();
                (
                    h.highest_equivalent(v.value_iterated_to()).max(1) as f64,
                    seen as f64 / n,
                )
            })
            .collect();
        chart
            .draw_series(LineSeries::new(pts, c.stroke_width(2)))
            .map_err(err)?
            .label(*plan)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
    }
    legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    root.present().map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_axis_within_a_decade_still_has_ticks() {
        assert_eq!(log_ticks(200.0, 900.0), [200.0, 300.0, 500.0, 700.0]);
        assert_eq!(
            log_ticks(1.0, 1000.0),
            [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
    }

    #[test]
    fn rounds_at_one_load_draw_one_point_of_the_line() {
        let dir = std::env::temp_dir().join(format!("streamrec-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("lat.svg");
        // Two rounds at each load, measured out of order.
        let pts = [
            ("single", 200.0, 320.0, 800.0),
            ("single", 100.0, 300.0, 600.0),
            ("single", 200.0, 340.0, 900.0),
            ("single", 100.0, 280.0, 500.0),
        ];
        latency_vs_qps(&f, "t", &pts, 1000.0).unwrap();
        let svg = std::fs::read_to_string(&f).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        // Every line of the plan runs left to right: no segment goes back or straight up.
        let mut lines = 0;
        for p in svg.split("<polyline").skip(1) {
            // The plan's own lines (its colour), not the grid.
            let p = p.split("/>").next().unwrap();
            if !p.to_uppercase().contains("#4477AA") {
                continue;
            }
            let pts = p
                .split("points=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let xs: Vec<f64> = pts
                .split_whitespace()
                .map(|xy| xy.split(',').next().unwrap().parse().unwrap())
                .collect();
            assert!(
                xs.windows(2).all(|w| w[1] > w[0]),
                "a line goes back: {pts}"
            );
            lines += 1;
        }
        assert!(lines >= 2, "{svg}");
        // The y axis, 190-1350 us, reads at several values.
        for tick in [200, 300, 500, 700, 1000] {
            assert!(
                svg.contains(&format!(">\n{tick}\n</text>")),
                "no tick {tick}"
            );
        }
    }
}
