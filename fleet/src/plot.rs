//! `fleet simulate --plot`: one SVG with a panel per region: the media demand (capacity units
//! in use, as nodes of the simulated size) and each policy's media machines over the trace —
//! the picture an operator looks at before changing a policy.

use std::path::Path;

use anyhow::Context;
use fleet_sim::Timeline;
use plotters::prelude::*;

/// Line colours per policy, in run order.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Writes the plot of `runs` (policy name, its timeline) to `path`.
pub fn write_plot(
    path: &Path,
    runs: &[(String, Timeline)],
    node_capacity: u64,
) -> anyhow::Result<()> {
    let Some((_, first)) = runs.first() else {
        return Ok(());
    };
    let media: Vec<(usize, &str)> = first
        .pools
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.strip_suffix("/media").map(|r| (i, r)))
        .collect();
    if media.is_empty() {
        anyhow::bail!("--plot: no media pool to plot");
    }
    let cols = 4usize;
    let rows = media.len().div_ceil(cols);
    let root = SVGBackend::new(path, (1600, 320 * rows as u32)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("--plot: {e}");
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let panels = root.split_evenly((rows, cols));
    let hours = |t_s: u64| t_s as f64 / 3600.0;
    let end_h = first.samples.last().map_or(1.0, |s| hours(s.t_s)).max(1.0);
    let capacity = node_capacity.max(1) as f64;
    for ((pool, region), panel) in media.iter().zip(&panels) {
        let demand: Vec<(f64, f64)> = first
            .samples
            .iter()
            .map(|s| (hours(s.t_s), s.used[*pool] as f64 / capacity))
            .collect();
        let top = runs
            .iter()
            .flat_map(|(_, t)| t.samples.iter().map(|s| f64::from(s.nodes[*pool])))
            .chain(demand.iter().map(|d| d.1))
            .fold(1.0f64, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(panel)
            .caption(*region, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(24)
            .y_label_area_size(36)
            .build_cartesian_2d(0.0..end_h, 0.0..top)
            .map_err(|e| draw(&e))?;
        chart
            .configure_mesh()
            .x_desc("hours")
            .y_desc("nodes")
            .light_line_style(WHITE)
            .draw()
            .map_err(|e| draw(&e))?;
        chart
            .draw_series(LineSeries::new(demand, BLACK.stroke_width(1)))
            .map_err(|e| draw(&e))?
            .label("demand")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
        for (i, (name, timeline)) in runs.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let line = timeline
                .samples
                .iter()
                .map(|s| (hours(s.t_s), f64::from(s.nodes[*pool])));
            chart
                .draw_series(LineSeries::new(line, colour.stroke_width(1)))
                .map_err(|e| draw(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| draw(&e))?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
