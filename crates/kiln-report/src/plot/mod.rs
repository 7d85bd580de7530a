//! Inline SVG charts generated in Rust: no JavaScript, no fonts or files
//! fetched, so the report opens anywhere (an air-gapped cluster included).

pub mod axis;
pub mod bar;
pub mod line;
pub mod panels;

pub use bar::{bar_chart, BarChart};
pub use line::{line_chart, LineChart, Series};
pub use panels::{panel_chart, Panel, PanelChart};

/// Tableau-10 order, with yellow last: it is hard to see as a thin line.
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#76b7b2", "#b07aa1", "#9c755f", "#ff9da7",
    "#bab0ac", "#edc948",
];

pub fn color(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// Rough width of `text` at `size` px in a sans-serif face: SVG cannot
/// measure text, and legends only need to avoid overlapping.
pub(crate) fn text_width(text: &str, size: f64) -> f64 {
    text.chars().count() as f64 * size * 0.6
}

/// Coordinates with one decimal: plenty for a 600-px chart, and keeps the
/// page small.
pub(crate) fn px(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r == r.trunc() {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}
