//! `--chart OUT.svg`: backlog (left axis, messages) and replicas (right axis) over time,
//! one pair of step lines per rule, drawn with plotters. A job rule's pair is its backlog
//! and its unfinished Jobs, on the same axes.

use std::collections::BTreeMap;

use plotters::prelude::*;

use super::{Row, RowReason};

/// A line's owner: a rule's or a job rule's name (the two may share one), and whether
/// it is a job rule.
type Owner<'a> = (&'a str, bool);

/// plotters could not draw the chart (its backends' errors are boxed).
#[derive(Debug, thiserror::Error)]
#[error("cannot draw the chart")]
pub struct ChartError(#[source] Box<dyn std::error::Error>);

/// Renders the timeline as an SVG document.
pub fn render(rows: &[Row]) -> Result<String, ChartError> {
    let mut by_rule: BTreeMap<Owner<'_>, Vec<&Row>> = BTreeMap::new();
    for r in rows {
        by_rule.entry((r.rule.as_str(), matches!(r.reason, RowReason::Job(_)))).or_default().push(r);
    }
    let secs = |r: &Row| r.time.0 as f64 / 1000.0;
    let x_max = rows.iter().map(secs).fold(1.0, f64::max);
    let backlog_max = rows.iter().filter_map(|r| r.backlog).max().unwrap_or(0).max(1) as f64 * 1.15;
    let replicas_max = rows.iter().map(|r| r.replicas).max().unwrap_or(0).max(1) as f64 * 1.15;

    let mut svg = String::new();
    draw(&mut svg, &by_rule, x_max, backlog_max, replicas_max).map_err(ChartError)?;
    Ok(svg)
}

fn draw(
    svg: &mut String,
    by_rule: &BTreeMap<Owner<'_>, Vec<&Row>>,
    x_max: f64,
    backlog_max: f64,
    replicas_max: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::with_string(svg, (960, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("sqscale simulate: queue backlog and replicas", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .right_y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, 0f64..backlog_max)?
        .set_secondary_coord(0f64..x_max, 0f64..replicas_max);
    let whole = |v: &f64| format!("{v:.0}");
    chart
        .configure_mesh()
        .x_desc("time (s)")
        .y_desc("backlog (messages)")
        .x_label_formatter(&whole)
        .y_label_formatter(&whole)
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    let right_axis = match (by_rule.keys().any(|k| !k.1), by_rule.keys().any(|k| k.1)) {
        (true, true) => "replicas, Jobs running",
        (false, true) => "Jobs running",
        _ => "replicas",
    };
    chart.configure_secondary_axes().y_desc(right_axis).y_label_formatter(&whole).draw()?;

    for (i, (&(rule, is_job), rows)) in by_rule.iter().enumerate() {
        let backlog_color = Palette99::pick(2 * i + 4).to_rgba();
        let replicas_color = Palette99::pick(2 * i).to_rgba();
        let secs = |r: &Row| r.time.0 as f64 / 1000.0;
        let suffix = if by_rule.len() > 1 { format!(" ({rule})") } else { String::new() };
        let replicas_label = if is_job { "Jobs running" } else { "replicas" };

        // Polls that failed have no backlog: the line breaks there rather than
        // pretending the queue was empty.
        let backlog = steps(rows.iter().map(|r| (secs(r), r.backlog.map(|b| b as f64))), x_max);
        // The backlog is a shaded area and the replicas a thick line, so the two stay
        // apart even where their scales make them meet.
        for segment in backlog {
            chart.draw_series(
                AreaSeries::new(segment, 0.0, backlog_color.mix(0.25)).border_style(backlog_color.stroke_width(1)),
            )?;
        }
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label(format!("backlog{suffix}"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], backlog_color.mix(0.25).filled()));

        let replicas = steps(rows.iter().map(|r| (secs(r), Some(f64::from(r.replicas)))), x_max);
        for segment in replicas {
            chart.draw_secondary_series(LineSeries::new(segment, replicas_color.stroke_width(3)))?;
        }
        chart
            .draw_secondary_series(std::iter::empty::<PathElement<(f64, f64)>>())?
            .label(format!("{replicas_label}{suffix}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], replicas_color.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    root.present()?;
    Ok(())
}

/// Turns samples into step-line segments (a value holds until the next sample); a
/// `None` sample ends the current segment.
fn steps(samples: impl Iterator<Item = (f64, Option<f64>)>, x_end: f64) -> Vec<Vec<(f64, f64)>> {
    let samples: Vec<_> = samples.collect();
    let mut segments = Vec::new();
    let mut current: Vec<(f64, f64)> = Vec::new();
    for (i, (x, y)) in samples.iter().enumerate() {
        let next_x = samples.get(i + 1).map_or(x_end, |(nx, _)| *nx);
        match y {
            Some(y) => {
                current.push((*x, *y));
                current.push((next_x, *y));
            }
            None => {
                if !current.is_empty() {
                    segments.push(std::mem::take(&mut current));
                }
            }
        }
    }
    if !current.is_empty() {
        segments.push(current);
    }
    segments
}
