//! Turning measured rows into the report: a markdown table beside the paper's figures, and a
//! latency-percentile plot per row (SVG).

use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::shapes::{Shape, PAPER_RAW_UDP_US};
use crate::Row;

/// Markdown table of `rows` (one line per row and system), with the paper's columns for the
/// shape beside ours.
pub fn markdown(rows: &[Row], shapes: &[Shape]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| call | paper: local µs | paper: NinjaRMI µs | system | waiting | p50 µs | p99 µs | p99.9 µs | max µs | calls/s | p50 ÷ raw UDP | p99 ÷ raw UDP |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let shape = shapes.iter().find(|s| s.name() == r.row);
        let local = shape.map_or(String::new(), |s| format!("{:.2}", s.paper_local_us()));
        let rmi = shape.and_then(|s| s.paper_rmi_us()).map_or("—".to_string(), |v| format!("{v:.0}"));
        let ratio = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.2}×"));
        let _ = writeln!(
            out,
            "| `{}` | {local} | {rmi} | {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {} | {} |",
            r.row,
            r.system,
            r.waiting,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            r.max_us,
            r.calls_per_s,
            ratio(r.ratio_to_raw_udp),
            ratio(r.p99_ratio_to_raw_udp),
        );
    }
    let _ = writeln!(
        out,
        "\nPaper (1999, 400 MHz Pentium II, 100 Mb/s Ethernet): raw UDP round trip between two C programs {PAPER_RAW_UDP_US:.0} µs; null NinjaRMI 820 µs (4.4×)."
    );
    out
}

/// Percentiles plotted, as the "nines" axis: 0, 90, 99, 99.9, 99.99 %.
fn percentile_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    // x = 1 / (1 - q) on a log axis spreads the tail out.
    let mut pts = Vec::new();
    let mut q = 0.0f64;
    while q <= 0.9999 {
        let v = h.value_at_quantile(q) as f64 / 1000.0;
        pts.push((1.0 / (1.0 - q), v.max(0.1)));
        q += (1.0 - q) / 20.0;
    }
    pts
}

/// Draw a latency-percentile plot (log-log: percentile "nines" across, µs up) of `series`.
pub fn percentile_plot(path: &Path, title: &str, series: &[(String, &Histogram<u64>)]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let points: Vec<Vec<(f64, f64)>> = series.iter().map(|(_, h)| percentile_points(h)).collect();
    let max_y = points.iter().flatten().map(|p| p.1).fold(1.0f64, f64::max) * 1.2;
    let min_y = points.iter().flatten().map(|p| p.1).fold(f64::MAX, f64::min).max(0.1) * 0.8;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((1f64..10_000f64).log_scale(), (min_y..max_y).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile")
        .y_desc("round trip (µs)")
        .x_label_formatter(&|x| {
            let q = 100.0 * (1.0 - 1.0 / x);
            if q < 1.0 {
                "0%".to_string()
            } else {
                format!("{q:.2}%").replace(".00%", "%")
            }
        })
        .draw()?;
    for (i, ((name, _), pts)) in series.iter().zip(&points).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}
