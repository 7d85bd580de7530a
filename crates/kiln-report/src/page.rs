//! Assembles the report page from a read run: overview, training curves,
//! evaluation, samples. Every piece of text from the run is escaped here
//! or in the plot code; nothing is fetched when the page opens.

use std::fmt::Write;

use crate::groups::{charts_for, is_hidden};
use crate::html::{escape, fmt_num, Table};
use crate::plot::{bar_chart, color, line_chart, BarChart, LineChart, Series};
use crate::read::eval::JUDGE_SCORE;
use crate::read::{EvalResults, Run, SampleRow, StageMetrics, KNOWN_STAGES};

const STYLE: &str = include_str!("style.css");
/// Longer responses are cut (the page is for reading, not archiving).
const MAX_RESPONSE_CHARS: usize = 700;
/// Sample rows shown per table.
const MAX_SAMPLE_ROWS: usize = 24;

pub fn render(run: &Run) -> String {
    let dir = run.dir.display().to_string();
    let mut page = String::with_capacity(64 * 1024);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>kiln report: {d}</title><style>{STYLE}</style></head><body>\
         <header><h1>kiln run report</h1><p class=\"run-dir\">{d}</p><nav>\
         <a href=\"#overview\">Overview</a><a href=\"#training\">Training curves</a>\
         <a href=\"#evaluation\">Evaluation</a><a href=\"#samples\">Samples</a></nav></header><main>",
        d = escape(&dir)
    );
    overview(&mut page, run);
    training(&mut page, run);
    evaluation(&mut page, run.eval.as_ref());
    samples(&mut page, run);
    let _ = writeln!(
        page,
        "</main><footer>Written by <code>kiln report</code> from {}. \
         A single self-contained file: no scripts, no network access.</footer></body></html>",
        escape(&dir)
    );
    page
}

fn overview(page: &mut String, run: &Run) {
    page.push_str("<section id=\"overview\"><h2>Overview</h2><div class=\"badges\">");
    // The stages run, in pipeline order (rounds beside their stage), then
    // the pipeline stages that did not run.
    let mut names: Vec<&str> = run.stages.iter().map(|s| s.stage.as_str()).collect();
    names.extend(
        KNOWN_STAGES
            .iter()
            .copied()
            .filter(|k| run.stage(k).is_none()),
    );
    for name in names {
        match run.stage(name) {
            Some(s) => {
                let steps = s
                    .last_step()
                    .map_or("no steps".into(), |x| format!("{} steps", fmt_num(x)));
                let _ = write!(
                    page,
                    "<span class=\"badge ran\">{} · {steps}</span>",
                    escape(name)
                );
            }
            None => {
                let _ = write!(
                    page,
                    "<span class=\"badge absent\">{} · not run</span>",
                    escape(name)
                );
            }
        }
    }
    page.push_str("</div>");

    let notes: Vec<&String> = run.stages.iter().flat_map(|s| &s.notes).collect();
    if !run.missing.is_empty() || !notes.is_empty() {
        page.push_str("<div class=\"missing\"><h3>Not in this report</h3><ul>");
        for m in run.missing.iter().chain(notes) {
            let _ = write!(page, "<li>{}</li>", escape(m));
        }
        page.push_str("</ul></div>");
    }

    if !run.stages.is_empty() {
        page.push_str("<h3>Training at a glance</h3>");
        let mut t = Table::new(
            "glance",
            ["Stage", "Steps", "Final values (last logged)"].map(String::from),
        );
        for s in &run.stages {
            t.row(vec![
                escape(&s.stage),
                s.last_step().map_or("—".into(), fmt_num),
                final_values(s),
            ]);
        }
        page.push_str(&t.render());
    }

    // The pipeline's summary.json, then each stage's own summary.json.
    let mut cards: Vec<(String, &Vec<(String, String)>)> = Vec::new();
    if let Some(summary) = &run.summary {
        cards.extend(
            summary
                .sections
                .iter()
                .map(|(name, rows)| (name.clone(), rows)),
        );
    }
    for (stage, rows) in &run.stage_summaries {
        cards.push((format!("{stage}/summary.json"), rows));
    }
    if !cards.is_empty() {
        page.push_str("<h3>Summary figures</h3><div class=\"cards\">");
        for (title, rows) in cards {
            let mut t =
                Table::new("figures", ["Figure", "Value"].map(String::from)).numeric_from(1);
            for (k, v) in rows {
                t.row(vec![escape(k), escape(v)]);
            }
            let _ = write!(
                page,
                "<div class=\"card\"><h3>{}</h3>{}</div>",
                escape(&title),
                t.render()
            );
        }
        page.push_str("</div>");
    }
    page.push_str("</section>");
}

/// "loss 2.31  val_loss 2.52 ..." for every charted metric.
fn final_values(s: &StageMetrics) -> String {
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

fn training(page: &mut String, run: &Run) {
    page.push_str("<section id=\"training\"><h2>Training curves</h2>");
    if run.stages.is_empty() {
        page.push_str(
            "<p class=\"empty\">No stage has a metrics.jsonl yet, so there is nothing to plot.</p>",
        );
    }
    for stage in &run.stages {
        let _ = write!(
            page,
            "<div class=\"stage\" id=\"stage-{id}\"><h3>{name}</h3>",
            id = escape(&stage.stage.replace(char::is_whitespace, "-")),
            name = escape(&stage.stage)
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

fn evaluation(page: &mut String, eval: Option<&EvalResults>) {
    page.push_str("<section id=\"evaluation\"><h2>Evaluation</h2>");
    let Some(eval) = eval.filter(|e| !e.models.is_empty()) else {
        page.push_str(
            "<p class=\"empty\">No evaluation results (eval/results.json is missing or lists no models).</p></section>",
        );
        return;
    };
    let score = figure_named(eval, &[JUDGE_SCORE], "score");
    let win = figure_named(eval, &["win_rate"], "win");
    let mut charts = String::new();
    for (figure, title, y_label) in [
        (&score, "Judge score per model", "judge score"),
        (&win, "Win rate per model", "win rate"),
    ] {
        let Some(figure) = figure else { continue };
        let bars: Vec<(String, f64, usize)> = eval
            .models
            .iter()
            .enumerate()
            .map(|(i, m)| (m.name.clone(), m.figure(figure).unwrap_or(f64::NAN), i))
            .collect();
        let in_unit = bars
            .iter()
            .all(|b| !b.1.is_finite() || (0.0..=1.0).contains(&b.1));
        let title = format!("{title} ({figure})");
        let svg = bar_chart(&BarChart {
            title: &title,
            y_label,
            bars: &bars,
            unit_interval: in_unit,
        });
        let _ = write!(charts, "<div class=\"chart-card\">{svg}</div>");
    }
    if !charts.is_empty() {
        let _ = write!(page, "<div class=\"charts\">{charts}</div>");
    }

    // One table: a row per model (all tasks), then a row per task kind.
    let mut columns: Vec<String> = Vec::new();
    for name in score.iter().chain(win.iter()) {
        columns.push(name.clone());
    }
    for m in &eval.models {
        let task_figures = m.tasks.iter().flat_map(|t| &t.1);
        for (name, _) in m.figures.iter().chain(task_figures) {
            if !columns.contains(name) {
                columns.push(name.clone());
            }
        }
    }
    let header = ["Model".to_string(), "Task".to_string()]
        .into_iter()
        .chain(columns.iter().map(|c| escape(c)));
    let mut t = Table::new("eval", header).numeric_from(2);
    let cells = |figures: &[(String, f64)]| -> Vec<String> {
        columns
            .iter()
            .map(|c| {
                figures
                    .iter()
                    .find(|f| &f.0 == c)
                    .map_or("—".into(), |f| fmt_num(f.1))
            })
            .collect()
    };
    for (i, m) in eval.models.iter().enumerate() {
        let model = format!(
            "<span class=\"swatch\" style=\"background:{}\"></span>{}",
            color(i),
            escape(&m.name)
        );
        let mut row = vec![model.clone(), "all".into()];
        row.extend(cells(&m.figures));
        t.row_class("overall", row);
        for (task, figures) in &m.tasks {
            let mut row = vec![model.clone(), escape(task)];
            row.extend(cells(figures));
            t.row(row);
        }
    }
    page.push_str("<h3>Results per model and task kind</h3>");
    page.push_str(&t.render());
    page.push_str("</section>");
}

/// The first preferred figure any model has, else the first containing
/// `fallback`.
fn figure_named(eval: &EvalResults, preferred: &[&str], fallback: &str) -> Option<String> {
    let has = |n: &str| eval.models.iter().any(|m| m.figure(n).is_some());
    preferred
        .iter()
        .find(|p| has(p))
        .map(|p| p.to_string())
        .or_else(|| {
            eval.models
                .iter()
                .flat_map(|m| &m.figures)
                .find(|f| f.0.contains(fallback))
                .map(|f| f.0.clone())
        })
}

fn samples(page: &mut String, run: &Run) {
    page.push_str("<section id=\"samples\"><h2>Samples</h2>");
    let chat = run.eval.as_ref().map_or(&[][..], |e| &e.samples[..]);
    let models: Vec<String> = run
        .eval
        .as_ref()
        .map(|e| e.models.iter().map(|m| m.name.clone()).collect())
        .unwrap_or_default();
    let pretrain = run.summary.as_ref().map_or(&[][..], |s| &s.samples[..]);
    if chat.is_empty() && pretrain.is_empty() {
        page.push_str("<p class=\"empty\">No samples (neither eval/results.json nor summary.json has any).</p>");
    }
    if !chat.is_empty() {
        page.push_str("<h3>The same prompts, answered by each stage's model</h3>");
        page.push_str(&sample_table(chat, &models));
    }
    if !pretrain.is_empty() {
        page.push_str("<h3>Pretrained model: continuations (summary.json)</h3>");
        page.push_str(&sample_table(pretrain, &[]));
    }
    page.push_str("</section>");
}

/// Prompt first, then one column per model; models in `order` first (with
/// their colours), then any others the rows mention.
fn sample_table(rows: &[SampleRow], order: &[String]) -> String {
    let mut models: Vec<String> = order.to_vec();
    for r in rows {
        for resp in &r.responses {
            if !models.contains(&resp.model) {
                models.push(resp.model.clone());
            }
        }
    }
    let header =
        std::iter::once("Prompt".to_string()).chain(models.iter().enumerate().map(|(i, m)| {
            format!(
                "<span class=\"swatch\" style=\"background:{}\"></span>{}",
                color(i),
                escape(m)
            )
        }));
    let mut t = Table::new("samples", header).first_cell_class("prompt");
    for r in rows.iter().take(MAX_SAMPLE_ROWS) {
        let mut prompt = escape(&r.prompt);
        if let Some(task) = &r.task {
            let _ = write!(prompt, "\n<span class=\"task\">{}</span>", escape(task));
        }
        let mut cells = vec![prompt];
        for m in &models {
            let cell = match r.responses.iter().find(|x| &x.model == m) {
                None => "<span class=\"empty\">—</span>".to_string(),
                Some(resp) => {
                    let mut c = escape(&truncate(&resp.text, MAX_RESPONSE_CHARS));
                    match (resp.score, &resp.reason) {
                        (Some(score), Some(reason)) => {
                            let _ = write!(
                                c,
                                "<span class=\"score\">score {} · {}</span>",
                                fmt_num(score),
                                escape(reason)
                            );
                        }
                        (Some(score), None) => {
                            let _ =
                                write!(c, "<span class=\"score\">score {}</span>", fmt_num(score));
                        }
                        _ => {}
                    }
                    c
                }
            };
            cells.push(cell);
        }
        t.row(cells);
    }
    let mut html = t.render();
    if rows.len() > MAX_SAMPLE_ROWS {
        let _ = write!(
            html,
            "<p class=\"empty\">Showing {MAX_SAMPLE_ROWS} of {} prompts.</p>",
            rows.len()
        );
    }
    html
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max).collect();
    s.push_str(" …");
    s
}
