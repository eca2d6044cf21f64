//! `--plot`: the run over time as an SVG of three panels — sessions and participants up, nodes
//! per pool, and setup time (p50 and p95 of the participants that came up each second).

use plotters::prelude::*;

use crate::series::Series;

/// Drawing the plot failed.
#[derive(Debug, thiserror::Error)]
#[error("plot: {0}")]
pub struct PlotError(String);

fn err(e: impl std::fmt::Display) -> PlotError {
    PlotError(e.to_string())
}

/// A line of the plot: its name and its points (seconds from the start, value).
type Line = (String, Vec<(f64, f64)>);

/// The series drawn as an SVG document.
pub fn svg(series: &Series, title: &str) -> Result<String, PlotError> {
    let start = series.samples.first().map_or(0, |s| s.unix_s);
    let t = |unix_s: u64| (unix_s - start) as f64;
    let t_max = series.samples.last().map_or(1.0, |s| t(s.unix_s).max(1.0));
    let load: Vec<Line> = vec![
        (
            "sessions up".into(),
            series
                .samples
                .iter()
                .map(|s| (t(s.unix_s), s.sessions_active as f64))
                .collect(),
        ),
        (
            "participants up".into(),
            series
                .samples
                .iter()
                .map(|s| (t(s.unix_s), s.participants_active as f64))
                .collect(),
        ),
    ];
    let pools: Vec<Line> = series
        .pool_keys()
        .into_iter()
        .map(|key| {
            let points = series
                .samples
                .iter()
                .filter_map(|s| {
                    s.pools
                        .get(&key)
                        .map(|p| (t(s.unix_s), f64::from(p.nodes())))
                })
                .collect();
            (format!("{key} nodes"), points)
        })
        .collect();
    let setup = |q: f64| -> Vec<(f64, f64)> {
        series
            .samples
            .iter()
            .filter_map(|s| s.setups.quantile(q).map(|v| (t(s.unix_s), v)))
            .collect()
    };
    let setups: Vec<Line> = vec![
        ("setup p50 ms".into(), setup(0.5)),
        ("setup p95 ms".into(), setup(0.95)),
    ];

    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 960)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let root = root.titled(title, ("sans-serif", 22)).map_err(err)?;
        let panels = root.split_evenly((3, 1));
        let specs = [
            ("Load", "count", &load),
            ("Nodes per pool (admin token)", "nodes", &pools),
            ("Setup: API request to first remote packet", "ms", &setups),
        ];
        for (area, (caption, unit, lines)) in panels.iter().zip(specs) {
            panel(area, caption, unit, lines, t_max)?;
        }
        root.present().map_err(err)?;
    }
    Ok(out)
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    unit: &str,
    lines: &[Line],
    t_max: f64,
) -> Result<(), PlotError> {
    let y_max = lines
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, y)| y))
        .fold(1.0_f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("seconds from the start")
        .y_desc(unit)
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(err)?
            .label(name.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2))
            });
    }
    if !lines.is_empty() {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::series::{PoolSample, Sample};

    #[test]
    fn a_run_draws_as_svg_with_its_lines_named() {
        let mut series = Series::default();
        for i in 0..20u64 {
            let mut s = Sample {
                unix_s: 1_000 + i,
                sessions_active: i.min(10),
                participants_active: 2 * i.min(10),
                ..Sample::default()
            };
            s.setups.record(50.0 + i as f64);
            s.pools.insert(
                "eu-west-1/media".into(),
                PoolSample {
                    serving: 1 + (i / 10) as u32,
                    ..PoolSample::default()
                },
            );
            series.push(s);
        }
        let svg = svg(&series, "loadsim").unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..60]);
        for name in ["sessions up", "eu-west-1/media nodes", "setup p95 ms"] {
            assert!(svg.contains(name), "{name} missing");
        }
        // An empty run still draws (axes only).
        assert!(svg_is_document(
            &super::svg(&Series::default(), "empty").unwrap()
        ));
    }

    fn svg_is_document(s: &str) -> bool {
        s.starts_with("<svg") && s.trim_end().ends_with("</svg>")
    }
}
