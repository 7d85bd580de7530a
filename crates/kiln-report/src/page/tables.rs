//! Every figure, last and folded (`<details>`): the evaluation per model and
//! task kind, each stage's last logged values, and each stage's summary
//! once: the pipeline's summary.json section merged with the stage's own
//! summary.json (the same figures, so they are not shown twice). Keys are
//! shown as readable labels.

use std::fmt::Write;

use super::curves::final_values;
use crate::html::{escape, fmt_num, Table};
use crate::labels::label;
use crate::plot::color;
use crate::read::eval::JUDGE_SCORE;
use crate::read::{EvalResults, Run};

pub(super) fn render(page: &mut String, run: &Run) {
    page.push_str(
        "<section id=\"figures\"><h2>All figures</h2>\
         <p class=\"hint\">Folded: open a section to read its table.</p>",
    );
    if let Some(eval) = run.eval.as_ref().filter(|e| !e.models.is_empty()) {
        fold(
            page,
            "eval-table",
            "Evaluation per model and task kind",
            &eval_table(eval),
        );
    }
    if !run.stages.is_empty() {
        let mut t = Table::new(
            "glance",
            ["Stage", "Steps", "Last logged values"].map(String::from),
        );
        for s in &run.stages {
            t.row(vec![
                escape(&s.stage),
                s.last_step().map_or("—".into(), fmt_num),
                final_values(s),
            ]);
        }
        fold(
            page,
            "last-values",
            "Last logged value of every metric",
            &t.render(),
        );
    }
    for (name, rows) in merged_sections(run) {
        let mut t = Table::new("figures", ["Figure", "Value"].map(String::from)).numeric_from(1);
        for (k, v) in &rows {
            t.row(vec![escape(&label(k)), escape(v)]);
        }
        let id = format!(
            "figures-{}",
            name.replace(|c: char| !c.is_alphanumeric(), "-")
        );
        fold(page, &id, &format!("{} figures", label(&name)), &t.render());
    }
    page.push_str("</section>");
}

fn fold(page: &mut String, id: &str, title: &str, body: &str) {
    let _ = write!(
        page,
        "<details class=\"card fold\" id=\"{}\"><summary>{}</summary>{body}</details>",
        escape(id),
        escape(title)
    );
}

/// summary.json's sections in file order, each with the figures of the
/// stage's own summary.json that it lacks; then stages only their own file
/// describes.
fn merged_sections(run: &Run) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<(String, Vec<(String, String)>)> = run
        .summary
        .as_ref()
        .map(|s| s.sections.clone())
        .unwrap_or_default();
    for (stage, rows) in &run.stage_summaries {
        match out.iter_mut().find(|(name, _)| name == stage) {
            Some((_, have)) => {
                for (k, v) in rows {
                    if !have.iter().any(|(hk, _)| hk == k) {
                        have.push((k.clone(), v.clone()));
                    }
                }
            }
            None => out.push((stage.clone(), rows.clone())),
        }
    }
    out
}

/// One row per model (all tasks), then a row per task kind.
fn eval_table(eval: &EvalResults) -> String {
    let mut columns: Vec<String> = Vec::new();
    if eval.models.iter().any(|m| m.figure(JUDGE_SCORE).is_some()) {
        columns.push(JUDGE_SCORE.into());
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
        .chain(columns.iter().map(|c| escape(&label(c))));
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
    t.render()
}
