//! One document through the per-document stages: normalise, input limits,
//! language, Gopher repetition, Gopher quality, C4 (rewrites), FineWeb,
//! decontamination, PII redaction, then the optional model-based perplexity
//! filter (the costliest, so last). Stage order follows FineWeb's pipeline.

use crate::config::CurateConfig;
use crate::decontam::Decontaminator;
use crate::doc::Document;
use crate::filters::c4::C4Outcome;
use crate::filters::perplexity::PerplexityOutcome;
use crate::filters::Rejection;
use crate::normalize::normalize;
use crate::pii::PiiCounts;
use crate::read::BadRecord;
use crate::stats::STAGES;
use crate::words::split_words;
use serde::Serialize;
use std::time::Instant;

/// One line of `rejected/*.jsonl.zst`: a removed document (`kind` =
/// "document"), a removed line ("line") or unreadable input ("bad_input").
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Reject {
    pub kind: String,
    pub id: String,
    pub file: String,
    pub line: u64,
    pub filter: String,
    pub rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Line number inside the document (line rejects).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub doc_line: Option<usize>,
    pub text: String,
}

impl Reject {
    fn from_rejection(d: &Document, r: &Rejection) -> Self {
        Reject {
            kind: "document".into(),
            id: d.id.clone(),
            file: d.origin.file.clone(),
            line: d.origin.line,
            filter: r.filter.into(),
            rule: r.rule.into(),
            value: Some(r.value),
            threshold: Some(r.threshold),
            detail: None,
            doc_line: None,
            text: d.text.clone(),
        }
    }

    pub fn bad_input(b: &BadRecord) -> Self {
        Reject {
            kind: "bad_input".into(),
            id: String::new(),
            file: b.origin.file.clone(),
            line: b.origin.line,
            filter: "input".into(),
            rule: b.reason.into(),
            value: Some(b.raw_len as f64),
            threshold: None,
            detail: Some(b.detail.clone()),
            doc_line: None,
            text: String::new(),
        }
    }

    /// Bytes this record removed from the corpus.
    pub fn bytes(&self) -> u64 {
        if self.kind == "bad_input" {
            self.value.unwrap_or(0.0) as u64
        } else {
            self.text.len() as u64
        }
    }
}

/// The result of processing one document.
#[derive(Debug, Default)]
pub struct Outcome {
    pub kept: Option<Document>,
    pub rejects: Vec<Reject>,
    /// Nanoseconds per stage, indexed like [`crate::stats::STAGES`].
    pub time_ns: [u64; STAGES.len()],
    pub pii: PiiCounts,
    /// Bytes of the document as read (before normalisation).
    pub input_bytes: u64,
}

pub struct Processor {
    pub cfg: CurateConfig,
    pub decontam: Decontaminator,
}

impl Processor {
    pub fn new(cfg: CurateConfig) -> std::io::Result<Self> {
        cfg.perplexity.validate().map_err(std::io::Error::other)?;
        let decontam = if cfg.decontamination.enabled {
            Decontaminator::from_config(&cfg.decontamination)?
        } else {
            Decontaminator::new(cfg.decontamination.n)
        };
        Ok(Processor { cfg, decontam })
    }

    pub fn process(&self, doc: Document) -> Outcome {
        let mut out = Outcome {
            input_bytes: doc.text.len() as u64,
            ..Default::default()
        };
        self.process_into(doc, &mut out);
        out
    }

    fn process_into(&self, mut doc: Document, out: &mut Outcome) {
        let mut t = Instant::now();
        if self.cfg.normalize.enabled {
            doc.text = normalize(&doc.text);
        }
        let input_reject = |rule: &'static str, value: f64, threshold: f64| {
            Rejection::new("input", rule, value, threshold)
        };
        if doc.text.trim().is_empty() {
            tick(&mut out.time_ns, 0, &mut t);
            out.rejects.push(Reject::from_rejection(
                &doc,
                &input_reject("empty_document", 0.0, 1.0),
            ));
            return;
        }
        if doc.text.len() > self.cfg.limits.max_doc_bytes {
            tick(&mut out.time_ns, 0, &mut t);
            let r = input_reject(
                "huge_document",
                doc.text.len() as f64,
                self.cfg.limits.max_doc_bytes as f64,
            );
            out.rejects.push(Reject::from_rejection(&doc, &r));
            return;
        }
        tick(&mut out.time_ns, 0, &mut t);

        let c = &self.cfg;
        if c.language.enabled {
            let (det, rej) = c.language.check(&doc.text);
            tick(&mut out.time_ns, 1, &mut t);
            if let Some(r) = rej {
                let mut rec = Reject::from_rejection(&doc, &r);
                rec.detail = det.map(|d| d.lang.to_string());
                out.rejects.push(rec);
                return;
            }
            if let Some(d) = det {
                doc.meta.insert("language".into(), d.lang.into());
                doc.meta.insert(
                    "language_score".into(),
                    ((d.confidence * 1e4).round() / 1e4).into(),
                );
            }
        }

        let words = split_words(&doc.text);
        if c.gopher_repetition.enabled {
            let r = c.gopher_repetition.check(&doc.text, &words);
            tick(&mut out.time_ns, 2, &mut t);
            if let Some(r) = r {
                out.rejects.push(Reject::from_rejection(&doc, &r));
                return;
            }
        }
        if c.gopher_quality.enabled {
            let r = c.gopher_quality.check(&doc.text, &words);
            tick(&mut out.time_ns, 3, &mut t);
            if let Some(r) = r {
                out.rejects.push(Reject::from_rejection(&doc, &r));
                return;
            }
        }
        drop(words);
        if c.c4.enabled {
            match c.c4.apply(&doc.text) {
                C4Outcome::Drop(r) => {
                    tick(&mut out.time_ns, 4, &mut t);
                    out.rejects.push(Reject::from_rejection(&doc, &r));
                    return;
                }
                C4Outcome::Keep { text, removed } => {
                    tick(&mut out.time_ns, 4, &mut t);
                    for l in removed {
                        out.rejects.push(Reject {
                            kind: "line".into(),
                            id: doc.id.clone(),
                            file: doc.origin.file.clone(),
                            line: doc.origin.line,
                            filter: "c4".into(),
                            rule: l.rule.into(),
                            value: None,
                            threshold: None,
                            detail: None,
                            doc_line: Some(l.line),
                            text: l.text,
                        });
                    }
                    doc.text = text;
                }
            }
        }
        if c.fineweb.enabled {
            let n_words = split_words(&doc.text).len();
            let r = c.fineweb.check(&doc.text, n_words);
            tick(&mut out.time_ns, 5, &mut t);
            if let Some(r) = r {
                out.rejects.push(Reject::from_rejection(&doc, &r));
                return;
            }
        }
        if c.decontamination.enabled && !self.decontam.is_empty() {
            let hit = self.decontam.check(&doc.text);
            tick(&mut out.time_ns, 6, &mut t);
            if let Some(h) = hit {
                let r = Rejection::new(
                    "decontamination",
                    "eval_ngram_overlap",
                    h.matches as f64,
                    1.0,
                );
                let mut rec = Reject::from_rejection(&doc, &r);
                rec.detail = Some(format!(
                    "eval {} shares {}-gram \"{}\"",
                    h.eval_id, c.decontamination.n, h.ngram
                ));
                out.rejects.push(rec);
                return;
            }
        }
        if c.pii.enabled {
            let (text, counts) = c.pii.redact(&doc.text);
            if let Some(t) = text {
                doc.text = t;
            }
            out.pii = counts;
        }
        // Last: scoring with a model costs far more than every rule above.
        if c.perplexity.enabled {
            t = Instant::now(); // PII redaction is not a timed stage
            let outcome = c.perplexity.check(&doc.text);
            tick(&mut out.time_ns, 7, &mut t);
            match outcome {
                PerplexityOutcome::Scored { value, rejection } => {
                    if let Some(r) = rejection {
                        out.rejects.push(Reject::from_rejection(&doc, &r));
                        return;
                    }
                    let rounded = (value * 1e4).round() / 1e4;
                    doc.meta.insert("perplexity".into(), rounded.into());
                }
                PerplexityOutcome::Failed(e) => {
                    let r = Rejection::new("perplexity", "score_failed", 0.0, 0.0);
                    let mut rec = Reject::from_rejection(&doc, &r);
                    rec.value = None;
                    rec.threshold = None;
                    rec.detail = Some(e);
                    out.rejects.push(rec);
                    return;
                }
            }
        }
        out.kept = Some(doc);
    }
}

/// Adds the time since `t` to `stage` and restarts the clock.
fn tick(times: &mut [u64; STAGES.len()], stage: usize, t: &mut Instant) {
    let now = Instant::now();
    times[stage] += (now - *t).as_nanos() as u64;
    *t = now;
}
