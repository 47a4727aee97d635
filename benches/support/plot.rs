//! The growth benchmark's charts (plotters, SVG): throughput and p99 against the number of
//! records, and bytes per record, one line per store and operation.

use super::Point;
use plotters::prelude::*;
use std::path::Path;

const STORES: [(&str, RGBColor); 3] = [
    ("memory", RGBColor(31, 119, 180)),
    ("redis", RGBColor(214, 39, 40)),
    ("postgres", RGBColor(44, 160, 44)),
];

/// One line: a label, its colour, dashed or not, and its points.
struct Line {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// Writes `growth-throughput.svg`, `growth-p99.svg` and `growth-bytes.svg` into `dir`.
pub fn charts(points: &[Point], dir: &Path) {
    let lines = |value: &dyn Fn(&Point) -> Option<(f64, f64)>| -> Vec<Line> {
        let mut out = Vec::new();
        for (store, color) in STORES {
            for (op, dashed) in [("replay", false), ("new key", true)] {
                let pts: Vec<(f64, f64)> = points
                    .iter()
                    .filter(|p| p.store == store)
                    .filter_map(|p| {
                        let (replay, new) = value(p)?;
                        Some((p.records as f64, if dashed { new } else { replay }))
                    })
                    .collect();
                if !pts.is_empty() {
                    out.push(Line {
                        label: format!("{store} {op}"),
                        color,
                        dashed,
                        points: pts,
                    });
                }
            }
        }
        out
    };
    let throughput = lines(&|p| Some((p.replay.ops_per_sec, p.new_key.ops_per_sec)));
    let p99 = lines(&|p| Some((p.replay.p99_us as f64, p.new_key.p99_us as f64)));
    let bytes: Vec<Line> = STORES
        .iter()
        .filter_map(|&(store, color)| {
            let pts: Vec<(f64, f64)> = points
                .iter()
                .filter(|p| p.store == store)
                .map(|p| (p.records as f64, p.bytes_per_record))
                .collect();
            (!pts.is_empty()).then(|| Line {
                label: store.to_owned(),
                color,
                dashed: false,
                points: pts,
            })
        })
        .collect();
    for (file, title, y, data) in [
        (
            "growth-throughput.svg",
            "Operations per second as records grow",
            "ops/s (log)",
            &throughput,
        ),
        (
            "growth-p99.svg",
            "p99 latency as records grow",
            "p99 µs (log)",
            &p99,
        ),
        (
            "growth-bytes.svg",
            "Bytes per record",
            "bytes/record (log)",
            &bytes,
        ),
    ] {
        if let Err(e) = chart(&dir.join(file), title, y, data) {
            println!("chart {file} not written: {e}");
        } else {
            println!("wrote {}", dir.join(file).display());
        }
    }
}

fn chart(
    path: &Path,
    title: &str,
    y_desc: &str,
    lines: &[Line],
) -> Result<(), Box<dyn std::error::Error>> {
    let all = lines.iter().flat_map(|l| l.points.iter());
    let (mut y_min, mut y_max) = (f64::MAX, f64::MIN);
    for &(_, y) in all {
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if y_min > y_max {
        return Err("no data".into());
    }
    let root = SVGBackend::new(path, (760, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (5e3f64..2e7f64).log_scale(),
            ((y_min / 2.0).max(1.0)..y_max * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("records in the store (log)")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0e}"))
        .y_label_formatter(&|y| {
            if *y >= 1e6 {
                format!("{:.0}M", y / 1e6)
            } else if *y >= 1e3 {
                format!("{:.0}k", y / 1e3)
            } else {
                format!("{y:.0}")
            }
        })
        .draw()?;
    for line in lines {
        let style = ShapeStyle::from(&line.color).stroke_width(2);
        let color = line.color;
        if line.dashed {
            chart
                .draw_series(DashedLineSeries::new(line.points.clone(), 6, 4, style))?
                .label(&line.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        } else {
            chart
                .draw_series(LineSeries::new(line.points.clone(), style))?
                .label(&line.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart.draw_series(
            line.points
                .iter()
                .map(|&p| Circle::new(p, 3, ShapeStyle::from(&color).filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()?;
    root.present()?;
    Ok(())
}
