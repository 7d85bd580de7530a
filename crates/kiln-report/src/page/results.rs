//! The first screen: the verdict against the targets, each model's judge
//! score / win rate / KL as bars with their numbers, the curation funnel,
//! and pretraining (tokens trained, the loss curve).

use std::fmt::Write;

use super::{fmt_bytes, fmt_count, fmt_short};
use crate::groups::charts_for;
use crate::headline::{
    model_results, percent, pretraining, verdicts, ModelResult, Outcome, WIN_RATE_TARGET,
};
use crate::html::{escape, fmt_num};
use crate::labels::label;
use crate::plot::{line_chart, panel_chart, LineChart, Panel, PanelChart, Series};
use crate::read::{Funnel, Run};

pub(super) fn render(page: &mut String, run: &Run) {
    let models = model_results(run.eval.as_ref());
    page.push_str("<section id=\"results\"><div class=\"results\">");
    verdict_card(page, run, &models);
    judge_card(page, &models);
    funnel_card(page, run.funnel.as_ref());
    pretraining_card(page, run);
    page.push_str("</div>");
    missing(page, run);
    page.push_str("</section>");
}

fn verdict_card(page: &mut String, run: &Run, models: &[ModelResult]) {
    page.push_str(
        "<div class=\"card verdict\" id=\"verdict\"><h2>Did it work? Targets</h2><ul class=\"verdicts\">",
    );
    for v in verdicts(run, models) {
        let (class, mark, word) = match v.outcome {
            Outcome::Met => ("met", "✓", "met"),
            Outcome::Missed => ("missed", "✗", "missed"),
            Outcome::NotMeasured => ("unknown", "–", "not measured"),
        };
        let _ = write!(
            page,
            "<li class=\"{class}\"><span class=\"mark\" title=\"{word}\">{mark}</span>\
             <span class=\"what\">{t}<span class=\"goal\">target {g}</span></span>\
             <span class=\"val\">{val}<span class=\"word\">{word}</span></span></li>",
            t = escape(&v.target),
            g = escape(&v.goal),
            val = escape(&v.value),
        );
    }
    page.push_str("</ul></div>");
}

fn judge_card(page: &mut String, models: &[ModelResult]) {
    page.push_str("<div class=\"card judge\" id=\"judge-chart\">");
    if models.is_empty() {
        page.push_str(
            "<h2>Judge</h2><p class=\"empty\">No evaluation results (eval/results.json is \
             missing or lists no models).</p></div>",
        );
        return;
    }
    let rows: Vec<(String, usize)> = models.iter().map(|m| (m.name.clone(), m.color)).collect();
    let col = |f: fn(&ModelResult) -> Option<f64>| -> Vec<f64> {
        models.iter().map(|m| f(m).unwrap_or(f64::NAN)).collect()
    };
    let mut panels = vec![Panel {
        title: "judge score (mean, 0-1)",
        values: col(|m| m.judge),
        format: fmt_num,
        min_extent: 0.0,
        target: None,
    }];
    if models.iter().any(|m| m.win_rate.is_some()) {
        panels.push(Panel {
            title: "win rate vs SFT (ties half)",
            values: col(|m| m.win_rate),
            format: percent,
            min_extent: 1.0,
            target: Some((
                WIN_RATE_TARGET,
                format!("target {:.0}%", 100.0 * WIN_RATE_TARGET),
            )),
        });
    }
    if models.iter().any(|m| m.kl.is_some()) {
        panels.push(Panel {
            title: "KL to SFT (nats)",
            values: col(|m| m.kl),
            format: fmt_num,
            min_extent: 0.0,
            target: None,
        });
    }
    page.push_str(&panel_chart(&PanelChart {
        title: "Every model, judged on the held-out tasks",
        rows: &rows,
        panels: &panels,
    }));
    page.push_str("</div>");
}

fn funnel_card(page: &mut String, funnel: Option<&Funnel>) {
    page.push_str("<div class=\"card funnel-card\" id=\"funnel\"><h2>Curation</h2>");
    let Some(f) = funnel else {
        page.push_str(
            "<p class=\"empty\">No curation totals (neither curated/stats.json nor \
             summary.json's curate section).</p></div>",
        );
        return;
    };
    let docs_and_bytes = |docs: f64, bytes: Option<f64>| match bytes {
        Some(b) => format!("{} docs · {}", fmt_count(docs), fmt_bytes(b)),
        None => format!("{} docs", fmt_count(docs)),
    };
    let share = |docs: f64| {
        if f.input_docs > 0.0 {
            (100.0 * docs / f.input_docs).clamp(0.0, 100.0)
        } else {
            0.0
        }
    };
    let row = |page: &mut String, class: &str, name: &str, docs: f64, text: String| {
        let _ = write!(
            page,
            "<div class=\"frow {class}\"><span class=\"flabel\">{n}</span>\
             <span class=\"fbar\"><i style=\"width:{w:.1}%\"></i></span>\
             <span class=\"fnum\">{t}</span></div>",
            n = escape(name),
            w = share(docs),
            t = escape(&text),
        );
    };
    page.push_str("<div class=\"funnel\">");
    row(
        page,
        "in",
        "In",
        f.input_docs,
        docs_and_bytes(f.input_docs, f.input_bytes),
    );
    for (name, docs, bytes) in &f.removed {
        row(
            page,
            "removed",
            &format!("−\u{a0}{}", label(name)),
            *docs,
            docs_and_bytes(*docs, *bytes),
        );
    }
    row(
        page,
        "kept",
        "Kept",
        f.kept_docs,
        docs_and_bytes(f.kept_docs, f.kept_bytes),
    );
    page.push_str("</div>");
    if let Some(b) = f.line_bytes_removed {
        let _ = write!(
            page,
            "<p class=\"note\">Lines cut from kept documents: {}.</p>",
            fmt_bytes(b)
        );
    }
    page.push_str("</div>");
}

fn pretraining_card(page: &mut String, run: &Run) {
    let p = pretraining(run);
    page.push_str(
        "<div class=\"card pretraining\" id=\"pretraining\"><h2>Pretraining</h2><div class=\"pre-grid\"><dl class=\"stats\">",
    );
    let mut stat = |name: &str, value: String, detail: Option<String>| {
        let _ = write!(
            page,
            "<div><dt>{}</dt><dd>{}{}</dd></div>",
            escape(name),
            escape(&value),
            detail.map_or(String::new(), |d| format!(
                "<span class=\"detail\">{}</span>",
                escape(&d)
            ))
        );
    };
    let steps = p.steps.map(|s| format!("{} steps", fmt_count(s)));
    match p.tokens_trained {
        Some(t) => stat(
            "Tokens trained",
            fmt_short(t),
            match (steps.clone(), p.tokens_per_step) {
                (Some(s), Some(per)) => Some(format!("{s} × {}", fmt_count(per))),
                (s, _) => s,
            },
        ),
        None => stat("Steps", p.steps.map_or("—".into(), fmt_count), None),
    }
    if let Some(t) = p.train_tokens {
        stat(
            "Corpus tokens",
            fmt_short(t),
            p.val_tokens.map(|v| format!("+ {} held out", fmt_short(v))),
        );
    }
    if p.model.is_some() || p.parameters.is_some() {
        stat(
            "Model",
            p.model.clone().unwrap_or_else(|| "—".into()),
            p.parameters.map(|n| format!("{} parameters", fmt_short(n))),
        );
    }
    if let Some(l) = p.val_loss.or(p.final_loss) {
        let name = if p.val_loss.is_some() {
            "Held-out loss"
        } else {
            "Final loss"
        };
        stat(
            name,
            fmt_num(l),
            p.val_ppl.map(|x| format!("perplexity {}", fmt_num(x))),
        );
    }
    page.push_str("</dl><div class=\"curve\">");
    match pretraining_curve(run) {
        Some(svg) => page.push_str(&svg),
        None => page.push_str("<p class=\"empty\">No pretrain/metrics.jsonl to plot.</p>"),
    }
    page.push_str("</div></div></div>");
}

/// The pretraining loss chart (training and validation loss together).
fn pretraining_curve(run: &Run) -> Option<String> {
    let stage = run.stage("pretrain")?;
    let spec = charts_for(stage)
        .into_iter()
        .find(|c| c.title.ends_with(": Loss"))?;
    let series: Vec<Series> = spec
        .columns
        .iter()
        .map(|&i| Series {
            name: stage.columns[i].name.clone(),
            points: stage.columns[i].points.clone(),
        })
        .collect();
    Some(line_chart(&LineChart {
        title: "Pretraining loss",
        x_label: "step",
        y_label: "nats",
        series: &series,
        smooth: spec.smooth,
    }))
}

/// What the page cannot show, folded: a pipeline run never has GRPO, so
/// the list would otherwise take the first screen's room.
fn missing(page: &mut String, run: &Run) {
    let notes: Vec<&String> = run.stages.iter().flat_map(|s| &s.notes).collect();
    let n = run.missing.len() + notes.len();
    if n == 0 {
        return;
    }
    let _ = write!(
        page,
        "<details class=\"missing\"><summary>Not in this report ({n})</summary><ul>"
    );
    for m in run.missing.iter().chain(notes) {
        let _ = write!(page, "<li>{}</li>", escape(m));
    }
    page.push_str("</ul></details>");
}
