//! A line chart as a standalone SVG (no plotting dependency): loss curves
//! against tokens trained, with axes, ticks, grid and a legend.

use std::fmt::Write;

pub struct Series {
    pub label: String,
    pub color: &'static str,
    /// Thin translucent line (training loss) or thick line with markers.
    pub thin: bool,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 760.0;
const H: f64 = 440.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 52.0;

/// Tick positions covering `[lo, hi]` at a 1-2-5 spacing (about 6 ticks),
/// computed as integer multiples over a power of ten so 0.6 prints as 0.6.
pub fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return vec![lo];
    }
    let raw = (hi - lo) / 6.0;
    let exp = raw.log10().floor() as i32;
    let pow = |e: i32| 10f64.powi(e.abs());
    let scale = |k: i64| -> f64 {
        if exp < 0 {
            k as f64 / pow(exp)
        } else {
            k as f64 * pow(exp)
        }
    };
    let mult = [1i64, 2, 5, 10]
        .into_iter()
        .find(|&m| scale(m) >= raw)
        .unwrap_or(10);
    let step = scale(mult);
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last).map(|k| scale(k * mult)).collect()
}

fn fmt_tick(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let all = series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    x0 = x0.min(0.0);
    let pad = (y1 - y0).max(1e-6) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| LEFT + (x - x0) / (x1 - x0).max(1e-12) * (W - LEFT - RIGHT);
    let py = |y: f64| TOP + (y1 - y) / (y1 - y0).max(1e-12) * (H - TOP - BOTTOM);

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        escape(title)
    );
    for t in ticks(x0, x1) {
        let x = px(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 16.0,
            fmt_tick(t)
        );
    }
    for t in ticks(y0, y1) {
        let y = py(t);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{:.1}" height="{:.1}" fill="none" stroke="#444"/>"##,
        W - LEFT - RIGHT,
        H - TOP - BOTTOM
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        escape(y_label)
    );
    for se in series {
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let (width, opacity) = if se.thin { (1.2, 0.55) } else { (2.5, 1.0) };
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="{width}" stroke-opacity="{opacity}" points="{}"/>"#,
            se.color,
            pts.join(" ")
        );
        if !se.thin {
            for &(x, y) in &se.points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{}"/>"#,
                    px(x),
                    py(y),
                    se.color
                );
            }
        }
    }
    // Legend, top right inside the plot.
    let lx = W - RIGHT - 250.0;
    for (i, se) in series.iter().enumerate() {
        let y = TOP + 18.0 + 18.0 * i as f64;
        let (width, opacity) = if se.thin { (1.2, 0.55) } else { (2.5, 1.0) };
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="{width}" stroke-opacity="{opacity}"/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            se.color,
            lx + 30.0,
            y + 4.0,
            escape(&se.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn escape(t: &str) -> String {
    t.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Mean over a sliding window of `k` points ending at each point.
pub fn smooth(points: &[(f64, f64)], k: usize) -> Vec<(f64, f64)> {
    let k = k.max(1);
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(points.len());
    for (i, &(x, y)) in points.iter().enumerate() {
        sum += y;
        if i >= k {
            sum -= points[i - k].1;
        }
        out.push((x, sum / (i + 1).min(k) as f64));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 1.2), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2]);
        let t = ticks(3.7, 8.4);
        assert_eq!(t.first(), Some(&4.0));
        assert_eq!(t.last(), Some(&8.0));
        assert_eq!(ticks(5.0, 5.0), vec![5.0]);
    }

    #[test]
    fn smoothing_is_a_trailing_mean() {
        let p = [(0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (3.0, 7.0)];
        let s: Vec<f64> = smooth(&p, 2).iter().map(|q| q.1).collect();
        assert_eq!(s, vec![1.0, 2.0, 4.0, 6.0]);
    }

    #[test]
    fn chart_maps_points_inside_the_plot_and_escapes_labels() {
        let svg = line_chart(
            "a < b",
            "x",
            "y",
            &[Series {
                label: "s&t".into(),
                color: "#000",
                thin: false,
                points: vec![(0.0, 1.0), (10.0, 2.0)],
            }],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt; b") && svg.contains("s&amp;t"));
        assert_eq!(svg.matches("<circle").count(), 2);
        // x = 0 maps to the left edge, x = 10 to the right edge.
        assert!(svg.contains(&format!(r#"cx="{LEFT:.1}""#)));
        assert!(svg.contains(&format!(r#"cx="{:.1}""#, W - RIGHT)));
    }
}
