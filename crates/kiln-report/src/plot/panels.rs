//! Small multiples of horizontal bars: one row per model (named once, in
//! the left column), one panel per figure (judge score, win rate, KL), each
//! on its own scale, every bar labelled with its value, and an optional
//! dashed target line. Rows read like a table, so long model names never
//! need cutting.

use std::fmt::Write;

use super::{color, px, text_width};
use crate::html::escape;

pub struct Panel<'a> {
    pub title: &'a str,
    /// One value per row; NaN = not measured ("n/a").
    pub values: Vec<f64>,
    pub format: fn(f64) -> String,
    /// The scale reaches at least this far (1 for rates).
    pub min_extent: f64,
    /// (value, label) drawn as a dashed line.
    pub target: Option<(f64, String)>,
}

pub struct PanelChart<'a> {
    pub title: &'a str,
    /// (model name, colour index) per row.
    pub rows: &'a [(String, usize)],
    pub panels: &'a [Panel<'a>],
}

const WIDTH: f64 = 900.0;
const TITLE_H: f64 = 26.0;
const HEAD_H: f64 = 22.0;
const ROW_H: f64 = 26.0;
const BAR_H: f64 = 16.0;
const FOOT_H: f64 = 18.0;
const GAP: f64 = 22.0;
const FONT: f64 = 13.0;
/// Room right of the longest bar for its value.
const VALUE_ROOM: f64 = 52.0;

pub fn panel_chart(chart: &PanelChart) -> String {
    let label_w = chart
        .rows
        .iter()
        .map(|r| text_width(&r.0, FONT))
        .fold(40.0, f64::max)
        .min(170.0)
        + 12.0;
    let n = chart.panels.len().max(1) as f64;
    let panel_w = (WIDTH - label_w - GAP * (n - 1.0)) / n;
    let body_top = TITLE_H + HEAD_H;
    let height = body_top + ROW_H * chart.rows.len().max(1) as f64 + FOOT_H;
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"chart panel-chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" \
         role=\"img\" aria-label=\"{t}\"><text class=\"title\" x=\"0\" y=\"17\">{t}</text>",
        w = px(WIDTH),
        h = px(height),
        t = escape(chart.title),
    );
    for (i, (name, _)) in chart.rows.iter().enumerate() {
        let y = body_top + ROW_H * i as f64 + ROW_H / 2.0 + FONT * 0.35;
        let _ = write!(
            svg,
            "<text class=\"row-label\" x=\"{x}\" y=\"{y}\" text-anchor=\"end\">{n}</text>",
            x = px(label_w - 10.0),
            y = px(y),
            n = escape(&shorten(name, label_w - 12.0)),
        );
    }
    for (p, panel) in chart.panels.iter().enumerate() {
        let x0 = label_w + p as f64 * (panel_w + GAP);
        draw_panel(&mut svg, chart.rows, panel, x0, panel_w, body_top);
    }
    svg.push_str("</svg>");
    svg
}

fn draw_panel(
    svg: &mut String,
    rows: &[(String, usize)],
    panel: &Panel,
    x0: f64,
    w: f64,
    top: f64,
) {
    let finite = || panel.values.iter().copied().filter(|v| v.is_finite());
    let lo = finite().fold(0.0f64, f64::min);
    let target = panel.target.as_ref().map(|t| t.0);
    let hi = finite()
        .chain(target)
        .fold(panel.min_extent, f64::max)
        .max(lo + 1e-9);
    let bar_room = w - VALUE_ROOM;
    let sx = |v: f64| x0 + (v - lo) / (hi - lo) * bar_room;
    let bottom = top + ROW_H * rows.len().max(1) as f64;
    let _ = write!(
        svg,
        "<g class=\"panel\" data-title=\"{t}\"><text class=\"panel-title\" x=\"{x}\" y=\"{y}\">{t}</text>\
         <line class=\"axis\" x1=\"{z}\" y1=\"{top}\" x2=\"{z}\" y2=\"{b}\"/>",
        t = escape(panel.title),
        x = px(x0),
        y = px(top - 7.0),
        z = px(sx(0.0)),
        top = px(top),
        b = px(bottom),
    );
    for (i, (name, c)) in rows.iter().enumerate() {
        let v = panel.values.get(i).copied().unwrap_or(f64::NAN);
        let cy = top + ROW_H * i as f64 + ROW_H / 2.0;
        let ty = px(cy + FONT * 0.35);
        if !v.is_finite() {
            let _ = write!(
                svg,
                "<text class=\"value na\" x=\"{x}\" y=\"{ty}\">n/a</text>",
                x = px(sx(0.0) + 4.0)
            );
            continue;
        }
        let (a, b) = (sx(0.0).min(sx(v)), sx(0.0).max(sx(v)));
        let _ = write!(
            svg,
            "<rect class=\"bar\" data-name=\"{n}\" x=\"{x}\" y=\"{y}\" width=\"{bw}\" height=\"{bh}\" fill=\"{c}\"/>\
             <text class=\"value\" x=\"{vx}\" y=\"{ty}\">{v}</text>",
            n = escape(name),
            x = px(a),
            y = px(cy - BAR_H / 2.0),
            bw = px((b - a).max(0.5)),
            bh = px(BAR_H),
            c = color(*c),
            vx = px(sx(v).max(sx(0.0)) + 4.0),
            v = escape(&(panel.format)(v)),
        );
    }
    if let Some((t, label)) = &panel.target {
        let _ = write!(
            svg,
            "<line class=\"target\" x1=\"{x}\" y1=\"{y0}\" x2=\"{x}\" y2=\"{y1}\"/>\
             <text class=\"target-label\" x=\"{x}\" y=\"{ly}\" text-anchor=\"middle\">{l}</text>",
            x = px(sx(*t)),
            y0 = px(top - 2.0),
            y1 = px(bottom + 2.0),
            ly = px(bottom + 14.0),
            l = escape(label),
        );
    }
    svg.push_str("</g>");
}

fn shorten(name: &str, room: f64) -> String {
    if text_width(name, FONT) <= room {
        return name.to_string();
    }
    let keep = (room / (FONT * 0.6)).floor().max(2.0) as usize - 1;
    let mut s: String = name.chars().take(keep).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::html::fmt_num;

    fn rows() -> Vec<(String, usize)> {
        ["pretrain", "sft", "<dpo>"]
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), i))
            .collect()
    }

    #[test]
    fn one_bar_per_measured_value_with_its_number_and_the_target() {
        let rows = rows();
        let panels = [
            Panel {
                title: "judge score",
                values: vec![0.02, 0.29, 0.41],
                format: fmt_num,
                min_extent: 0.0,
                target: None,
            },
            Panel {
                title: "win rate vs SFT",
                values: vec![0.1, 0.5, f64::NAN],
                format: |v| format!("{:.1}%", 100.0 * v),
                min_extent: 1.0,
                target: Some((0.6, "target 60%".into())),
            },
        ];
        let svg = panel_chart(&PanelChart {
            title: "Judge",
            rows: &rows,
            panels: &panels,
        });
        assert_eq!(svg.matches("<rect class=\"bar\"").count(), 5);
        assert_eq!(svg.matches("<g class=\"panel\"").count(), 2);
        for v in [
            ">0.29</text>",
            ">0.41</text>",
            ">50.0%</text>",
            ">n/a</text>",
        ] {
            assert!(svg.contains(v), "{v} missing");
        }
        assert!(svg.contains("class=\"target\"") && svg.contains(">target 60%</text>"));
        assert!(svg.contains("&lt;dpo&gt;") && !svg.contains("<dpo>"));
    }

    #[test]
    fn bars_scale_within_their_panel() {
        let rows = rows();
        let panels = [Panel {
            title: "KL",
            values: vec![-0.5, 0.0, 2.0],
            format: fmt_num,
            min_extent: 0.0,
            target: None,
        }];
        let svg = panel_chart(&PanelChart {
            title: "t",
            rows: &rows,
            panels: &panels,
        });
        // Every bar lies inside the chart's width.
        for rect in svg.split("<rect class=\"bar\"").skip(1) {
            let attr = |k: &str| -> f64 {
                let s = rect.split(&format!(" {k}=\"")).nth(1).unwrap();
                s[..s.find('"').unwrap()].parse().unwrap()
            };
            assert!(attr("x") >= 0.0 && attr("x") + attr("width") <= WIDTH - VALUE_ROOM + 0.1);
        }
    }
}
