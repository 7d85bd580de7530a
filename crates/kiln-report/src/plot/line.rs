//! Line charts: one `<path class="series">` per series over a step axis,
//! with ticks, grid lines, axis labels and a legend.

use std::fmt::Write;

use super::axis::{inner_ticks, nice_ticks};
use super::{color, px, text_width};
use crate::html::escape;

/// Named (x, y) points; a non-finite y (a skipped step) leaves a gap.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

pub struct LineChart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: &'a [Series],
    /// Draw noisy series faintly and an exponential moving average on top.
    pub smooth: bool,
}

const WIDTH: f64 = 600.0;
const BASE_HEIGHT: f64 = 300.0;
const LEFT: f64 = 66.0;
const RIGHT: f64 = 18.0;
const BOTTOM: f64 = 44.0;
const TITLE_Y: f64 = 18.0;
const LEGEND_ROW: f64 = 16.0;
const FONT: f64 = 11.0;
/// More points than this are thinned to min/max per bucket (spikes kept).
const MAX_POINTS: usize = 1200;
/// Series with at most this many points also get a dot per point (sparse
/// series such as validation loss would otherwise be hard to see).
const MARKER_LIMIT: usize = 30;
/// Smoothing starts to help only with enough points.
const SMOOTH_MIN_POINTS: usize = 40;

pub fn line_chart(chart: &LineChart) -> String {
    let legend = legend_layout(chart.series);
    let rows = legend.last().map_or(1, |item| item.row + 1);
    let height = BASE_HEIGHT + (rows as f64 - 1.0) * LEGEND_ROW;
    let top = TITLE_Y + 12.0 + rows as f64 * LEGEND_ROW + 4.0;
    let area = Area {
        x0: LEFT,
        x1: WIDTH - RIGHT,
        y0: top,
        y1: height - BOTTOM,
    };

    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"chart line-chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" \
         role=\"img\" aria-label=\"{t}\"><text class=\"title\" x=\"{l}\" y=\"{ty}\">{t}</text>",
        w = px(WIDTH),
        h = px(height),
        t = escape(chart.title),
        l = px(LEFT),
        ty = px(TITLE_Y),
    );
    for item in &legend {
        let y = TITLE_Y + 12.0 + item.row as f64 * LEGEND_ROW;
        let _ = write!(
            svg,
            "<g class=\"legend-item\"><rect x=\"{x}\" y=\"{ry}\" width=\"12\" height=\"3\" fill=\"{c}\"/>\
             <text x=\"{tx}\" y=\"{y}\">{n}</text></g>",
            x = px(item.x),
            ry = px(y + 4.0),
            c = color(item.index),
            tx = px(item.x + 16.0),
            y = px(y + 8.0),
            n = escape(&chart.series[item.index].name),
        );
    }

    let prepared: Vec<Vec<(f64, f64)>> = chart.series.iter().map(|s| thin(&s.points)).collect();
    let finite = || {
        prepared
            .iter()
            .flatten()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
    };
    let (Some(xr), Some(yr)) = (range(finite().map(|p| p.0)), range(finite().map(|p| p.1))) else {
        let _ = write!(
            svg,
            "<text class=\"no-data\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">no finite values</text></svg>",
            px((area.x0 + area.x1) / 2.0),
            px((area.y0 + area.y1) / 2.0)
        );
        return svg;
    };
    let yt = nice_ticks(yr.0, yr.1, 5);
    let xt = inner_ticks(xr.0, xr.1, 6);
    let (xlo, xhi) = if xr.1 > xr.0 {
        xr
    } else {
        (xt.first(), xt.last())
    };
    let scale = Scale {
        area,
        xlo,
        xhi,
        ylo: yt.first(),
        yhi: yt.last(),
    };

    // Grid and y ticks.
    for (v, label) in yt.values.iter().zip(yt.labels()) {
        let y = px(scale.y(*v));
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{x0}\" y1=\"{y}\" x2=\"{x1}\" y2=\"{y}\"/>\
             <text class=\"tick\" x=\"{lx}\" y=\"{ly}\" text-anchor=\"end\">{label}</text>",
            x0 = px(area.x0),
            x1 = px(area.x1),
            lx = px(area.x0 - 6.0),
            ly = px(scale.y(*v) + FONT * 0.35),
        );
    }
    // x ticks.
    for (v, label) in xt.values.iter().zip(xt.labels()) {
        let x = px(scale.x(*v));
        let _ = write!(
            svg,
            "<line class=\"axis\" x1=\"{x}\" y1=\"{y0}\" x2=\"{x}\" y2=\"{y1}\"/>\
             <text class=\"tick\" x=\"{x}\" y=\"{ly}\" text-anchor=\"middle\">{label}</text>",
            y0 = px(area.y1),
            y1 = px(area.y1 + 4.0),
            ly = px(area.y1 + 6.0 + FONT),
        );
    }
    // Axes and their labels.
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{x0}\" y1=\"{y1}\" x2=\"{x1}\" y2=\"{y1}\"/>\
         <line class=\"axis\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\"/>\
         <text class=\"axis-label\" x=\"{cx}\" y=\"{xly}\" text-anchor=\"middle\">{xl}</text>\
         <text class=\"axis-label\" transform=\"translate(14 {cy}) rotate(-90)\" text-anchor=\"middle\">{yl}</text>",
        x0 = px(area.x0),
        x1 = px(area.x1),
        y0 = px(area.y0),
        y1 = px(area.y1),
        cx = px((area.x0 + area.x1) / 2.0),
        xly = px(height - 8.0),
        cy = px((area.y0 + area.y1) / 2.0),
        xl = escape(chart.x_label),
        yl = escape(chart.y_label),
    );

    for (i, (series, points)) in chart.series.iter().zip(&prepared).enumerate() {
        let c = color(i);
        let n_finite = points.iter().filter(|p| p.1.is_finite()).count();
        let name = escape(&series.name);
        if chart.smooth && n_finite >= SMOOTH_MIN_POINTS {
            let _ = write!(
                svg,
                "<path class=\"raw\" d=\"{}\" stroke=\"{c}\"/>",
                path_data(points, &scale)
            );
            let smoothed = ema(points, 0.9);
            let _ = write!(
                svg,
                "<path class=\"series\" data-name=\"{name}\" d=\"{}\" stroke=\"{c}\"/>",
                path_data(&smoothed, &scale)
            );
        } else {
            let _ = write!(
                svg,
                "<path class=\"series\" data-name=\"{name}\" d=\"{}\" stroke=\"{c}\"/>",
                path_data(points, &scale)
            );
        }
        if n_finite <= MARKER_LIMIT {
            for &(x, y) in points.iter().filter(|p| p.1.is_finite()) {
                let _ = write!(
                    svg,
                    "<circle class=\"marker\" cx=\"{}\" cy=\"{}\" r=\"2.5\" fill=\"{c}\"/>",
                    px(scale.x(x)),
                    px(scale.y(y))
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

#[derive(Clone, Copy)]
struct Area {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

struct Scale {
    area: Area,
    xlo: f64,
    xhi: f64,
    ylo: f64,
    yhi: f64,
}

impl Scale {
    fn x(&self, v: f64) -> f64 {
        self.area.x0 + (v - self.xlo) / (self.xhi - self.xlo) * (self.area.x1 - self.area.x0)
    }
    fn y(&self, v: f64) -> f64 {
        self.area.y1 - (v - self.ylo) / (self.yhi - self.ylo) * (self.area.y1 - self.area.y0)
    }
}

struct LegendItem {
    index: usize,
    row: usize,
    x: f64,
}

/// Legend entries left to right, wrapping onto further rows when full.
fn legend_layout(series: &[Series]) -> Vec<LegendItem> {
    let mut items = Vec::new();
    let (mut x, mut row) = (LEFT, 0);
    for (index, s) in series.iter().enumerate() {
        let w = 16.0 + text_width(&s.name, FONT) + 16.0;
        if x + w > WIDTH - RIGHT && x > LEFT {
            x = LEFT;
            row += 1;
        }
        items.push(LegendItem { index, row, x });
        x += w;
    }
    items
}

fn range(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

/// "M x y L x y ...", starting a new sub-path after each gap (non-finite y).
fn path_data(points: &[(f64, f64)], scale: &Scale) -> String {
    let mut d = String::new();
    let mut pen_down = false;
    for &(x, y) in points {
        if !(x.is_finite() && y.is_finite()) {
            pen_down = false;
            continue;
        }
        let cmd = if pen_down { 'L' } else { 'M' };
        if !d.is_empty() {
            d.push(' ');
        }
        let _ = write!(d, "{cmd}{} {}", px(scale.x(x)), px(scale.y(y)));
        pen_down = true;
    }
    d
}

/// Points sorted by x; long series reduced to the min and max of each
/// bucket so a 100k-step run stays a small page without hiding spikes.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut sorted = points.to_vec();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0));
    if sorted.len() <= MAX_POINTS {
        return sorted;
    }
    let buckets = MAX_POINTS / 2;
    let per = sorted.len().div_ceil(buckets);
    let mut out = Vec::with_capacity(MAX_POINTS);
    for chunk in sorted.chunks(per) {
        let finite: Vec<&(f64, f64)> = chunk.iter().filter(|p| p.1.is_finite()).collect();
        if finite.len() < chunk.len() {
            // Keep the gap visible.
            out.push((chunk[0].0, f64::NAN));
        }
        let lo = finite.iter().min_by(|a, b| a.1.total_cmp(&b.1));
        let hi = finite.iter().max_by(|a, b| a.1.total_cmp(&b.1));
        if let (Some(&&lo), Some(&&hi)) = (lo, hi) {
            if lo.0 <= hi.0 {
                out.extend([lo, hi]);
            } else {
                out.extend([hi, lo]);
            }
        }
    }
    out.dedup();
    out
}

/// Exponential moving average, debiased for its start (TensorBoard's
/// smoothing); gaps stay gaps.
fn ema(points: &[(f64, f64)], weight: f64) -> Vec<(f64, f64)> {
    let mut acc = 0.0;
    let mut n = 0;
    points
        .iter()
        .map(|&(x, y)| {
            if !y.is_finite() {
                return (x, y);
            }
            acc = acc * weight + (1.0 - weight) * y;
            n += 1;
            (x, acc / (1.0 - weight.powi(n)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, n: usize, f: impl Fn(f64) -> f64) -> Series {
        Series {
            name: name.into(),
            points: (1..=n).map(|i| (i as f64, f(i as f64))).collect(),
        }
    }

    fn count(haystack: &str, needle: &str) -> usize {
        haystack.matches(needle).count()
    }

    #[test]
    fn one_path_per_series_with_legend_and_axes() {
        let s = [
            series("loss", 100, |x| 10.0 / x.sqrt()),
            series("val_loss", 5, |x| 3.0 + 1.0 / x),
        ];
        let svg = line_chart(&LineChart {
            title: "pretrain: loss",
            x_label: "step",
            y_label: "nats",
            series: &s,
            smooth: false,
        });
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert_eq!(count(&svg, "class=\"series\""), 2);
        assert_eq!(count(&svg, "class=\"raw\""), 0);
        assert_eq!(count(&svg, "class=\"legend-item\""), 2);
        assert!(svg.contains(">val_loss</text>"));
        assert!(svg.contains(">step</text>") && svg.contains(">nats</text>"));
        // The sparse series gets markers, the dense one does not.
        assert_eq!(count(&svg, "class=\"marker\""), 5);
        assert!(count(&svg, "class=\"tick\"") >= 6);
    }

    #[test]
    fn smoothing_adds_a_faint_raw_path_but_still_one_series_path() {
        let s = [series("reward", 200, |x| (x * 0.7).sin() + x / 100.0)];
        let svg = line_chart(&LineChart {
            title: "ppo: reward",
            x_label: "step",
            y_label: "",
            series: &s,
            smooth: true,
        });
        assert_eq!(count(&svg, "class=\"series\""), 1);
        assert_eq!(count(&svg, "class=\"raw\""), 1);
    }

    #[test]
    fn non_finite_values_make_gaps_not_garbage() {
        let mut s = series("loss", 10, |x| x);
        s.points[4].1 = f64::NAN;
        let svg = line_chart(&LineChart {
            title: "t",
            x_label: "step",
            y_label: "",
            series: &[s],
            smooth: false,
        });
        assert!(!svg.contains("NaN") && !svg.contains("inf"));
        let d = svg.split("class=\"series\"").nth(1).unwrap();
        let d = d.split(" d=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(d.matches('M').count(), 2, "{d}");
    }

    #[test]
    fn empty_and_flat_series_still_render() {
        let empty = line_chart(&LineChart {
            title: "t",
            x_label: "step",
            y_label: "",
            series: &[Series {
                name: "x".into(),
                points: vec![],
            }],
            smooth: false,
        });
        assert!(empty.contains("no finite values") && empty.ends_with("</svg>"));
        let flat = line_chart(&LineChart {
            title: "t",
            x_label: "step",
            y_label: "",
            series: &[Series {
                name: "lr".into(),
                points: vec![(1.0, 3e-4)],
            }],
            smooth: false,
        });
        assert!(!flat.contains("NaN"), "{flat}");
        assert_eq!(count(&flat, "class=\"marker\""), 1);
    }

    #[test]
    fn points_stay_inside_the_plot_area() {
        let s = [series("a", 50, |x| x * x - 300.0)];
        let svg = line_chart(&LineChart {
            title: "t",
            x_label: "step",
            y_label: "",
            series: &s,
            smooth: false,
        });
        let d = svg
            .split(" d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        for pair in d.split(['M', 'L']).filter(|p| !p.trim().is_empty()) {
            let mut it = pair.split_whitespace().map(|v| v.parse::<f64>().unwrap());
            let (x, y) = (it.next().unwrap(), it.next().unwrap());
            assert!((LEFT..=WIDTH - RIGHT).contains(&x), "x {x}");
            assert!((0.0..=BASE_HEIGHT - BOTTOM).contains(&y), "y {y}");
        }
    }

    #[test]
    fn long_series_are_thinned_keeping_spikes() {
        let mut points: Vec<(f64, f64)> = (0..100_000).map(|i| (i as f64, 1.0)).collect();
        points[54_321].1 = 50.0;
        let thinned = thin(&points);
        assert!(thinned.len() <= MAX_POINTS + 1, "{}", thinned.len());
        assert!(thinned.iter().any(|p| p.1 == 50.0));
        assert!(thinned.windows(2).all(|w| w[0].0 <= w[1].0));
    }

    #[test]
    fn ema_is_debiased_and_converges() {
        let pts: Vec<(f64, f64)> = (0..100).map(|i| (i as f64, 2.0)).collect();
        let e = ema(&pts, 0.9);
        assert!(e.iter().all(|p| (p.1 - 2.0).abs() < 1e-12));
    }
}
