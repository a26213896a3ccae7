//! Evaluation metrics of click predictions.
//!
//! - AUC: [`dlrs_model::metrics::auc`] (ties count one half).
//! - log loss: mean BCE, `-(y ln p + (1 - y) ln(1 - p))`, logs clamped at -100 as
//!   torch.nn.BCELoss does (so it equals the training loss).
//! - normalized entropy (NE, as Facebook reports it): log loss divided by the entropy of the
//!   base click rate `c` (the mean label), `-(c ln c + (1 - c) ln(1 - c))`; below 1 means
//!   better than always predicting `c`. Undefined when every label is equal.
//! - calibration: mean prediction / mean label (1 is calibrated). Undefined with no clicks.
//! - saturated: the fraction of predictions within [`SATURATION_EPS`] of 0 or 1, or not a
//!   number (a diverged model's; its log loss stays finite because of the clamp).

use serde_json::{Value, json};

use crate::net::bce;

/// A prediction below this, or above `1 - SATURATION_EPS`, counts as saturated.
pub const SATURATION_EPS: f32 = 1e-6;

/// The fraction of `scores` that are saturated (below [`SATURATION_EPS`], above
/// `1 - SATURATION_EPS`) or NaN; 0 for no scores.
pub fn saturated_fraction(scores: &[f32]) -> f64 {
    let n = scores
        .iter()
        .filter(|&&p| !(SATURATION_EPS..=1.0 - SATURATION_EPS).contains(&p))
        .count();
    n as f64 / scores.len().max(1) as f64
}

/// The metrics of one evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalMetrics {
    pub samples: u64,
    pub auc: Option<f64>,
    pub log_loss: f64,
    pub ne: Option<f64>,
    pub calibration: Option<f64>,
    /// mean label (click-through rate)
    pub ctr: f64,
    pub mean_prediction: f64,
    /// fraction of saturated (or NaN) predictions, see [`saturated_fraction`]
    pub saturated: f64,
    pub samples_per_s: f64,
}

/// Entropy (nats) of a Bernoulli(c).
pub fn base_entropy(c: f64) -> f64 {
    if c <= 0.0 || c >= 1.0 {
        return 0.0;
    }
    -(c * c.ln() + (1.0 - c) * (1.0 - c).ln())
}

impl EvalMetrics {
    /// Metrics of `scores` against `labels` (0 or 1); `seconds` is the time it took to
    /// score them.
    pub fn compute(scores: &[f32], labels: &[f32], seconds: f64) -> Self {
        assert_eq!(scores.len(), labels.len());
        let n = scores.len();
        let nf = n.max(1) as f64;
        let log_loss = scores
            .iter()
            .zip(labels)
            .map(|(&p, &y)| bce(p, y) as f64)
            .sum::<f64>()
            / nf;
        let ctr = labels.iter().map(|&y| y as f64).sum::<f64>() / nf;
        let mean_prediction = scores.iter().map(|&p| p as f64).sum::<f64>() / nf;
        let h = base_entropy(ctr);
        EvalMetrics {
            samples: n as u64,
            auc: dlrs_model::metrics::auc(scores, labels),
            log_loss,
            ne: (n > 0 && h > 0.0).then(|| log_loss / h),
            calibration: (n > 0 && ctr > 0.0).then(|| mean_prediction / ctr),
            ctr,
            mean_prediction,
            saturated: saturated_fraction(scores),
            samples_per_s: if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            },
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "samples": self.samples,
            "auc": self.auc,
            "log_loss": self.log_loss,
            "ne": self.ne,
            "calibration": self.calibration,
            "ctr": self.ctr,
            "mean_prediction": self.mean_prediction,
            "saturated": self.saturated,
            "samples_per_s": self.samples_per_s,
        })
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let o = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.5}"));
        format!(
            "auc {} log_loss {:.5} ne {} calibration {} ({} samples, ctr {:.4}, {:.0} samples/s)",
            o(self.auc),
            self.log_loss,
            o(self.ne),
            o(self.calibration),
            self.samples,
            self.ctr,
            self.samples_per_s
        )
    }
}
