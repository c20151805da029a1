//! The training progress display: an indicatif bar on a terminal; plain log lines when stderr is not a
//! terminal (CI, redirected output), where indicatif would print nothing.

use super::metrics::StepMetrics;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub struct Progress {
    bar: Option<ProgressBar>,
    /// Without a bar: print a line every `log_every` steps (and at every evaluation).
    log_every: usize,
    total: usize,
    quiet: bool,
    /// `optimizer/rotation`, at the start of every line.
    label: String,
}

impl Progress {
    pub fn new(start: usize, total: usize, quiet: bool, label: String) -> Self {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30.cyan/blue} step {pos}/{len} | {msg} | {elapsed_precise} < ETA {eta_precise}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_position(start as u64);
            bar.reset_eta();
            bar
        });
        Progress {
            bar,
            log_every: (total / 20).max(1),
            total,
            quiet,
            label,
        }
    }

    pub fn step(&self, m: &StepMetrics) {
        let val = m
            .val_loss
            .map(|v| format!(" | val {v:.4}"))
            .unwrap_or_default();
        let msg = format!(
            "{} | loss {:.4}{val} | lr {:.2e} | {:.0} tok/s | {:.0} ms/step",
            self.label, m.train_loss, m.lr, m.tokens_per_s, m.ms_per_step
        );
        match &self.bar {
            Some(bar) => {
                if m.val_loss.is_some() {
                    bar.println(format!("step {:>6}: {msg}", m.step));
                }
                bar.set_message(msg);
                bar.set_position(m.step as u64);
            }
            None if !self.quiet
                && (m.step.is_multiple_of(self.log_every)
                    || m.val_loss.is_some()
                    || m.step == self.total) =>
            {
                eprintln!("step {:>6}/{}: {msg}", m.step, self.total);
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
