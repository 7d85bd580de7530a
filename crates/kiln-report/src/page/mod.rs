//! Assembles the report page from a read run, results first (as W&B's run
//! page and TensorBoard's scalars lead with charts): the first screen tells
//! the run's story (verdict, judge chart, curation funnel, pretraining),
//! then the curves of every stage, the samples side by side, and last every
//! figure in folded tables with readable labels. Every piece of text from
//! the run is escaped here or in the plot code; nothing is fetched when the
//! page opens.

mod curves;
mod results;
mod samples;
mod tables;

use std::fmt::Write;

use crate::html::escape;
use crate::read::Run;

const STYLE: &str = include_str!("../style.css");

pub fn render(run: &Run) -> String {
    let dir = run.dir.display().to_string();
    let mut page = String::with_capacity(64 * 1024);
    let wall = run
        .summary
        .as_ref()
        .and_then(|s| s.number(&["wall_s"]))
        .map(|s| format!("<span class=\"wall\">{}</span>", escape(&duration(s))))
        .unwrap_or_default();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>kiln report: {d}</title><style>{STYLE}</style></head><body>\
         <header><div class=\"title-row\"><h1>kiln run report</h1><span class=\"run-dir\">{d}</span>{wall}</div><nav>\
         <a href=\"#results\">Results</a><a href=\"#training\">Training curves</a>\
         <a href=\"#samples\">Samples</a><a href=\"#figures\">All figures</a></nav></header><main>",
        d = escape(&dir)
    );
    results::render(&mut page, run);
    curves::render(&mut page, run);
    samples::render(&mut page, run);
    tables::render(&mut page, run);
    let _ = writeln!(
        page,
        "</main><footer>Written by <code>kiln report</code> from {}. \
         A single self-contained file: no scripts, no network access.</footer></body></html>",
        escape(&dir)
    );
    page
}

/// "1538 s" as "25.6 min", short runs in seconds.
fn duration(seconds: f64) -> String {
    if seconds >= 120.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{seconds:.0} s")
    }
}

/// Thousands separated: 1234567 -> "1,234,567" (counts read faster so).
pub(crate) fn fmt_count(x: f64) -> String {
    if !x.is_finite() || x.fract() != 0.0 || x.abs() >= 1e15 {
        return crate::html::fmt_num(x);
    }
    let digits = format!("{}", x.abs() as u64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// Bytes in decimal units: "3.1 MB".
pub(crate) fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v.abs() >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Large counts short: 2_100_000 -> "2.1M", 43_000 -> "43k".
pub(crate) fn fmt_short(x: f64) -> String {
    let (v, suffix) = if x.abs() >= 1e9 {
        (x / 1e9, "B")
    } else if x.abs() >= 1e6 {
        (x / 1e6, "M")
    } else if x.abs() >= 1e4 {
        (x / 1e3, "k")
    } else {
        return fmt_count(x.round());
    };
    let s = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    };
    format!("{}{suffix}", s.trim_end_matches(".0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_and_durations_read_at_a_glance() {
        assert_eq!(fmt_count(1234567.0), "1,234,567");
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(fmt_count(-1000.0), "-1,000");
        assert_eq!(fmt_count(0.5), "0.5");
        assert_eq!(fmt_bytes(512.0), "512 B");
        assert_eq!(fmt_bytes(3_140_000.0), "3.1 MB");
        assert_eq!(fmt_short(2_100_000.0), "2.1M");
        assert_eq!(fmt_short(43_000.0), "43k");
        assert_eq!(fmt_short(2_457_600.0), "2.5M");
        assert_eq!(fmt_short(600.0), "600");
        assert_eq!(fmt_short(3e9), "3B");
        assert_eq!(duration(1538.0), "25.6 min");
        assert_eq!(duration(61.4), "61 s");
    }
}
