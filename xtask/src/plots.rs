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

/// p50 (solid) and p99 (dashed) latency against offered QPS, one colour per plan, log-log, with
/// the p99 bound as a horizontal line. `points`: (plan, offered QPS, p50 us, p99 us).
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
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(8)
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
        let c = color(plan);
        chart
            .draw_series(LineSeries::new(
                mine.iter().map(|p| (p.0, p.1.max(1.0))),
                c.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("{plan} p50"))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        chart
            .draw_series(DashedLineSeries::new(
                mine.iter().map(|p| (p.0, p.2.max(1.0))),
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
