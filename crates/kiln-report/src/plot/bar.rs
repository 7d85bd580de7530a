//! Bar charts: one bar per model (judge score, win rate), value printed on
//! each bar, models coloured as in the rest of the report.

use std::fmt::Write;

use super::axis::nice_ticks;
use super::{color, px, text_width};
use crate::html::{escape, fmt_num};

pub struct BarChart<'a> {
    pub title: &'a str,
    pub y_label: &'a str,
    /// (category, value, colour index).
    pub bars: &'a [(String, f64, usize)],
    /// Show the whole [0, 1] range (rates and fractions).
    pub unit_interval: bool,
}

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 280.0;
const LEFT: f64 = 66.0;
const RIGHT: f64 = 18.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 44.0;
const FONT: f64 = 11.0;

pub fn bar_chart(chart: &BarChart) -> String {
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM);
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg class=\"chart bar-chart\" viewBox=\"0 0 {w} {h}\" width=\"{w}\" height=\"{h}\" \
         role=\"img\" aria-label=\"{t}\"><text class=\"title\" x=\"{l}\" y=\"18\">{t}</text>",
        w = px(WIDTH),
        h = px(HEIGHT),
        t = escape(chart.title),
        l = px(LEFT),
    );
    let finite: Vec<f64> = chart
        .bars
        .iter()
        .map(|b| b.1)
        .filter(|v| v.is_finite())
        .collect();
    let mut lo = finite.iter().copied().fold(0.0f64, f64::min);
    let mut hi = finite.iter().copied().fold(0.0f64, f64::max);
    if chart.unit_interval {
        hi = hi.max(1.0);
        lo = lo.min(0.0);
    }
    let ticks = nice_ticks(lo, hi, 5);
    let (ylo, yhi) = (ticks.first(), ticks.last());
    let sy = |v: f64| y1 - (v - ylo) / (yhi - ylo) * (y1 - y0);

    for (v, label) in ticks.values.iter().zip(ticks.labels()) {
        let _ = write!(
            svg,
            "<line class=\"grid\" x1=\"{x0}\" y1=\"{y}\" x2=\"{x1}\" y2=\"{y}\"/>\
             <text class=\"tick\" x=\"{lx}\" y=\"{ly}\" text-anchor=\"end\">{label}</text>",
            x0 = px(x0),
            x1 = px(x1),
            y = px(sy(*v)),
            lx = px(x0 - 6.0),
            ly = px(sy(*v) + FONT * 0.35),
        );
    }
    let n = chart.bars.len().max(1) as f64;
    let slot = (x1 - x0) / n;
    let bar_w = (slot * 0.6).min(80.0);
    let zero = sy(0.0);
    for (i, (name, value, color_index)) in chart.bars.iter().enumerate() {
        let cx = x0 + slot * (i as f64 + 0.5);
        let label = shorten(name, slot, FONT);
        let _ = write!(
            svg,
            "<text class=\"tick category\" x=\"{cx}\" y=\"{ly}\" text-anchor=\"middle\">{label}</text>",
            cx = px(cx),
            ly = px(y1 + 6.0 + FONT),
            label = escape(&label),
        );
        if !value.is_finite() {
            let _ = write!(
                svg,
                "<text class=\"value\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">n/a</text>",
                px(cx),
                px(zero - 4.0)
            );
            continue;
        }
        let top = sy(*value).min(zero);
        let h = (sy(*value) - zero).abs();
        let _ = write!(
            svg,
            "<rect class=\"bar\" data-name=\"{n}\" x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" fill=\"{c}\"/>\
             <text class=\"value\" x=\"{cx}\" y=\"{vy}\" text-anchor=\"middle\">{v}</text>",
            n = escape(name),
            x = px(cx - bar_w / 2.0),
            y = px(top),
            w = px(bar_w),
            h = px(h),
            c = color(*color_index),
            cx = px(cx),
            vy = px(top - 4.0),
            v = fmt_num(*value),
        );
    }
    let _ = write!(
        svg,
        "<line class=\"axis\" x1=\"{x0}\" y1=\"{z}\" x2=\"{x1}\" y2=\"{z}\"/>\
         <line class=\"axis\" x1=\"{x0}\" y1=\"{y0}\" x2=\"{x0}\" y2=\"{y1}\"/>\
         <text class=\"axis-label\" transform=\"translate(14 {cy}) rotate(-90)\" text-anchor=\"middle\">{yl}</text>",
        x0 = px(x0),
        x1 = px(x1),
        y0 = px(y0),
        y1 = px(y1),
        z = px(zero),
        cy = px((y0 + y1) / 2.0),
        yl = escape(chart.y_label),
    );
    svg.push_str("</svg>");
    svg
}

/// A category name cut to fit its slot, with an ellipsis.
fn shorten(name: &str, slot: f64, size: f64) -> String {
    if text_width(name, size) <= slot - 4.0 {
        return name.to_string();
    }
    let keep = ((slot - 4.0) / (size * 0.6)).floor().max(2.0) as usize - 1;
    let mut s: String = name.chars().take(keep).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bar_per_model_with_its_value() {
        let bars = vec![
            ("pretrain".to_string(), 0.12, 0),
            ("sft".to_string(), 0.48, 1),
            ("<dpo>".to_string(), 0.61, 2),
        ];
        let svg = bar_chart(&BarChart {
            title: "Judge score",
            y_label: "mean score",
            bars: &bars,
            unit_interval: true,
        });
        assert_eq!(svg.matches("class=\"bar\"").count(), 3);
        assert!(svg.contains(">0.48</text>") && svg.contains(">0.61</text>"));
        assert!(svg.contains("&lt;dpo&gt;") && !svg.contains("<dpo>"));
        // The unit interval is shown whole: a tick at 1.
        assert!(svg.contains(">1.0</text>"), "{svg}");
    }

    #[test]
    fn negative_values_hang_below_zero_and_missing_values_say_so() {
        let bars = vec![("a".to_string(), -0.5, 0), ("b".to_string(), f64::NAN, 1)];
        let svg = bar_chart(&BarChart {
            title: "t",
            y_label: "",
            bars: &bars,
            unit_interval: false,
        });
        assert_eq!(svg.matches("class=\"bar\"").count(), 1);
        assert!(svg.contains(">n/a</text>") && !svg.contains("NaN"));
    }

    #[test]
    fn long_names_are_shortened() {
        assert_eq!(shorten("sft", 100.0, 11.0), "sft");
        let s = shorten("a-very-long-model-name-indeed", 60.0, 11.0);
        assert!(s.ends_with('…') && s.chars().count() < 12, "{s}");
    }
}
