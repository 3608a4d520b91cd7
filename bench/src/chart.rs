//! The chart: one panel per durability class, a group of bars per case (workload and
//! size), one bar per system, the median msgs/s on a log scale, with the range drawn as a
//! thin line over each bar. Hand-written SVG, no dependencies.

use std::fmt::Write as _;

use crate::plan::{size_label, Class, System};
use crate::report::Table;
use crate::stats::human;

const BAR_WIDTH: f64 = 7.0;
const GROUP_GAP: f64 = 8.0;
const PANEL_HEIGHT: f64 = 260.0;
const PANEL_GAP: f64 = 150.0;
const LEFT: f64 = 70.0;
const TOP: f64 = 50.0;

fn color(system: System) -> &'static str {
    match system {
        System::Ours => "#1f77b4",
        System::Nats => "#2ca02c",
        System::Redis => "#d62728",
        System::OursRecorded => "#9ecae1",
        System::OursBaseline => "#bdbdbd",
        System::OursTls => "#6baed6",
        System::OursCluster => "#08519c",
        System::NatsCluster => "#006d2c",
    }
}

/// Where the legend starts, right of the title.
const LEGEND_X: f64 = 480.0;

/// The chart as an SVG document.
pub fn svg(table: &Table, classes: &[Class], systems: &[System]) -> String {
    let groups_max = classes.iter().map(|&c| table.keys().filter(|case| case.class == c).count()).max().unwrap_or(0);
    let group_width = BAR_WIDTH * systems.len() as f64 + GROUP_GAP;
    // At least as wide as the title and the legend beside it.
    let legend_end = LEFT + LEGEND_X + systems.len() as f64 * 110.0;
    let width = (LEFT + groups_max as f64 * group_width + 40.0).max(legend_end);
    let height = TOP + classes.len() as f64 * (PANEL_HEIGHT + PANEL_GAP);
    let (low, high) = decades(table);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="10">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="20" font-size="14">msgs/s per case (median of repeats, log scale; line = min-max)</text>"#
    );
    for (i, system) in systems.iter().enumerate() {
        let x = LEFT + LEGEND_X + i as f64 * 110.0;
        let _ = writeln!(out, r#"<rect x="{x}" y="10" width="12" height="12" fill="{}"/>"#, color(*system));
        let _ = writeln!(out, r#"<text x="{}" y="20">{system}</text>"#, x + 16.0);
    }
    for (p, &class) in classes.iter().enumerate() {
        let top = TOP + p as f64 * (PANEL_HEIGHT + PANEL_GAP);
        panel(&mut out, table, class, systems, top, (low, high), group_width);
    }
    out.push_str("</svg>\n");
    out
}

/// The decades the axis spans: from below the smallest median to above the largest.
fn decades(table: &Table) -> (i32, i32) {
    let rates: Vec<f64> =
        table.values().flat_map(|cells| cells.values().filter_map(|c| c.rate().map(|r| r.max.max(r.median)))).collect();
    let mins: Vec<f64> =
        table.values().flat_map(|cells| cells.values().filter_map(|c| c.rate().map(|r| r.min))).collect();
    let high = rates.iter().copied().fold(10.0_f64, f64::max).log10().ceil() as i32;
    let low = mins.iter().copied().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    // Half the smallest rate, so a bar that sits on a decade (1k msgs/s) still shows.
    let low = if low.is_finite() { (low * 0.5).log10().floor() as i32 } else { 0 };
    (low.min(high - 1), high)
}

fn panel(out: &mut String, table: &Table, class: Class, systems: &[System], top: f64, axis: (i32, i32), gw: f64) {
    let (low, high) = axis;
    let y = |rate: f64| {
        let t = (rate.max(10f64.powi(low)).log10() - f64::from(low)) / f64::from(high - low);
        top + PANEL_HEIGHT * (1.0 - t.clamp(0.0, 1.0))
    };
    let _ = writeln!(out, r#"<text x="{LEFT}" y="{}" font-size="12" font-weight="bold">{class}</text>"#, top - 6.0);
    let cases: Vec<_> = table.iter().filter(|(case, _)| case.class == class).collect();
    let right = LEFT + cases.len() as f64 * gw;
    for decade in low..=high {
        let yy = y(10f64.powi(decade));
        let _ = writeln!(out, r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{right:.1}" y2="{yy:.1}" stroke="#ddd"/>"##);
        let label = human(10f64.powi(decade));
        let _ = writeln!(out, r#"<text x="{}" y="{:.1}" text-anchor="end">{label}</text>"#, LEFT - 4.0, yy + 3.0);
    }
    for (g, (case, cells)) in cases.iter().enumerate() {
        let x0 = LEFT + g as f64 * gw + GROUP_GAP / 2.0;
        for (i, &system) in systems.iter().enumerate() {
            let x = x0 + i as f64 * BAR_WIDTH;
            match cells.get(&system).and_then(|c| c.rate()) {
                Some(r) => {
                    let (yt, yb) = (y(r.median), top + PANEL_HEIGHT);
                    let _ = writeln!(
                        out,
                        r#"<rect x="{x:.1}" y="{yt:.1}" width="{:.1}" height="{:.1}" fill="{}"><title>{system} {}: {}</title></rect>"#,
                        BAR_WIDTH - 1.0,
                        (yb - yt).max(0.0),
                        color(system),
                        case.label(),
                        human(r.median)
                    );
                    let xm = x + (BAR_WIDTH - 1.0) / 2.0;
                    let _ = writeln!(
                        out,
                        r#"<line x1="{xm:.1}" y1="{:.1}" x2="{xm:.1}" y2="{:.1}" stroke="black" stroke-width="0.8"/>"#,
                        y(r.max),
                        y(r.min)
                    );
                }
                None => {
                    let yy = top + PANEL_HEIGHT - 3.0;
                    let _ = writeln!(
                        out,
                        r#"<text x="{x:.1}" y="{yy:.1}" font-size="7" fill="{}">x</text>"#,
                        color(system)
                    );
                }
            }
        }
        let lx = x0 + BAR_WIDTH;
        let ly = top + PANEL_HEIGHT + 8.0;
        let label = format!("{} {}", case.workload.id(), size_label(case.size));
        let _ = writeln!(
            out,
            r#"<text x="{lx:.1}" y="{ly:.1}" transform="rotate(60 {lx:.1} {ly:.1})" font-size="8">{label}</text>"#
        );
    }
}
