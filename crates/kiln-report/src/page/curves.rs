//! The curves of every stage: an index of the stages (what ran, how many
//! steps), then per stage its last values and its charts.

use std::fmt::Write;

use crate::groups::{charts_for, is_hidden};
use crate::html::{escape, fmt_num};
use crate::plot::{line_chart, LineChart, Series};
use crate::read::{Run, StageMetrics, KNOWN_STAGES};

fn anchor(stage: &str) -> String {
    escape(&stage.replace(char::is_whitespace, "-"))
}

pub(super) fn render(page: &mut String, run: &Run) {
    page.push_str("<section id=\"training\"><h2>Training curves</h2>");
    stage_index(page, run);
    if run.stages.is_empty() {
        page.push_str(
            "<p class=\"empty\">No stage has a metrics.jsonl yet, so there is nothing to plot.</p>",
        );
    }
    for stage in &run.stages {
        let _ = write!(
            page,
            "<div class=\"stage\" id=\"stage-{id}\"><h3>{name}</h3>{last}",
            id = anchor(&stage.stage),
            name = escape(&stage.stage),
            last = final_values(stage),
        );
        let charts = charts_for(stage);
        if charts.is_empty() {
            page.push_str("<p class=\"empty\">metrics.jsonl has no numeric metrics.</p>");
        } else {
            page.push_str("<div class=\"charts\">");
            for spec in charts {
                let series: Vec<Series> = spec
                    .columns
                    .iter()
                    .map(|&i| Series {
                        name: stage.columns[i].name.clone(),
                        points: stage.columns[i].points.clone(),
                    })
                    .collect();
                let svg = line_chart(&LineChart {
                    title: &spec.title,
                    x_label: "step",
                    y_label: &spec.y_label,
                    series: &series,
                    smooth: spec.smooth,
                });
                let _ = write!(page, "<div class=\"chart-card\">{svg}</div>");
            }
            page.push_str("</div>");
        }
        page.push_str("</div>");
    }
    page.push_str("</section>");
}

/// The stages run, in pipeline order (rounds beside their stage), linked to
/// their charts; then the pipeline stages that did not run.
fn stage_index(page: &mut String, run: &Run) {
    page.push_str("<div class=\"badges\">");
    for s in &run.stages {
        let steps = s
            .last_step()
            .map_or("no steps".into(), |x| format!("{} steps", fmt_num(x)));
        let _ = write!(
            page,
            "<a class=\"badge ran\" href=\"#stage-{id}\">{} · {steps}</a>",
            escape(&s.stage),
            id = anchor(&s.stage),
        );
    }
    for name in KNOWN_STAGES.iter().filter(|k| run.stage(k).is_none()) {
        let _ = write!(
            page,
            "<span class=\"badge absent\">{} · not run</span>",
            escape(name)
        );
    }
    page.push_str("</div>");
}

/// "loss 2.31  val_loss 2.52 ..." for every charted metric.
pub(super) fn final_values(s: &StageMetrics) -> String {
    let mut out = String::from("<div class=\"chips\">");
    for c in s.columns.iter().filter(|c| !is_hidden(&c.name)) {
        if let Some(v) = c.last_finite() {
            let _ = write!(
                out,
                "<span>{} <b>{}</b></span>",
                escape(&c.name),
                fmt_num(v)
            );
        }
    }
    out.push_str("</div>");
    out
}
