//! Each stage's answers to the same prompts, side by side, with the
//! judge's score; then the pretrained model's continuations.

use std::fmt::Write;

use crate::html::{escape, fmt_num, Table};
use crate::plot::color;
use crate::read::{Run, SampleRow};

/// Longer responses are cut (the page is for reading, not archiving).
const MAX_RESPONSE_CHARS: usize = 700;
/// Sample rows shown per table.
const MAX_SAMPLE_ROWS: usize = 24;

pub(super) fn render(page: &mut String, run: &Run) {
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
