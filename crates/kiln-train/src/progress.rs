//! Progress on stderr: an indicatif bar (loss, tokens/s, ETA) on a terminal;
//! where stderr is not a terminal (logs, CI) the bar hides itself and a plain
//! line is printed every `log_every` steps instead.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics::StepRecord;
use crate::trainer::Observer;

pub struct Progress {
    bar: ProgressBar,
    total: u64,
    log_every: u64,
}

impl Progress {
    /// A bar for a run going from step `start` to `total`.
    pub fn new(start: u64, total: u64, log_every: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} steps | {msg} | {elapsed_precise} < {eta_precise}",
            )
            .expect("static template"),
        );
        bar.set_position(start);
        Self {
            bar,
            total,
            log_every: log_every.max(1),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    fn line(&self, msg: &str) {
        if self.bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            self.bar.println(msg);
        }
    }
}

impl Observer for Progress {
    fn on_step(&mut self, r: &StepRecord) {
        self.bar.set_position(r.step);
        self.bar.set_message(format!(
            "loss {:.4} | {:.0} tok/s | lr {:.2e}",
            r.loss, r.tokens_per_s, r.lr
        ));
        if self.bar.is_hidden() && (r.step.is_multiple_of(self.log_every) || r.step == self.total) {
            eprintln!(
                "step {}/{} | loss {:.4} | grad norm {:.3} | lr {:.3e} | {:.0} tok/s | {:.1} s",
                r.step, self.total, r.loss, r.grad_norm, r.lr, r.tokens_per_s, r.elapsed_s
            );
        }
    }

    fn on_warning(&mut self, message: &str) {
        self.line(&format!("warning: {message}"));
    }

    fn on_checkpoint(&mut self, step: u64, dir: &Path) {
        self.line(&format!("checkpoint: step {step} -> {}", dir.display()));
    }
}
