//! Axis ranges and "nice" tick positions (steps of 1, 2 or 5 times a power
//! of ten), and tick labels short enough to sit beside an axis.

use crate::html::trim_sci;

/// Ticks for a value axis: the first tick is <= `lo`, the last >= `hi`,
/// about `target` of them, evenly spaced by a nice step.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    let (lo, hi) = widen_if_flat(lo, hi);
    let step = nice_step((hi - lo) / target.max(2) as f64);
    // Indices, not repeated additions, so ticks carry no accumulated error.
    // The tolerance keeps a bound that sits on a tick from adding another.
    let first = (lo / step + 1e-9).floor() as i64;
    let last = (hi / step - 1e-9).ceil() as i64;
    let values = (first..=last).map(|i| i as f64 * step).collect();
    Ticks { values, step }
}

/// Ticks inside [lo, hi] only (for the step axis, which keeps the data's
/// own range instead of widening to the next nice value).
pub fn inner_ticks(lo: f64, hi: f64, target: usize) -> Ticks {
    let (lo, hi) = widen_if_flat(lo, hi);
    let all = nice_ticks(lo, hi, target);
    let eps = all.step * 1e-9;
    let values = all
        .values
        .into_iter()
        .filter(|&v| v >= lo - eps && v <= hi + eps)
        .collect();
    Ticks {
        values,
        step: all.step,
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ticks {
    pub values: Vec<f64>,
    pub step: f64,
}

impl Ticks {
    pub fn first(&self) -> f64 {
        self.values[0]
    }
    pub fn last(&self) -> f64 {
        self.values[self.values.len() - 1]
    }
    pub fn labels(&self) -> Vec<String> {
        self.values
            .iter()
            .map(|&v| tick_label(v, self.step))
            .collect()
    }
}

/// A flat range (one value, or all equal) still needs an axis around it.
fn widen_if_flat(lo: f64, hi: f64) -> (f64, f64) {
    if hi > lo {
        (lo, hi)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    }
}

/// The smallest of 1, 2, 5 x 10^k that is >= `raw`.
fn nice_step(raw: f64) -> f64 {
    let raw = if raw > 0.0 && raw.is_finite() {
        raw
    } else {
        1.0
    };
    let pow = 10f64.powf(raw.log10().floor());
    let frac = raw / pow;
    let nice = if frac <= 1.0 + 1e-9 {
        1.0
    } else if frac <= 2.0 + 1e-9 {
        2.0
    } else if frac <= 5.0 + 1e-9 {
        5.0
    } else {
        10.0
    };
    nice * pow
}

/// A tick label with just the decimals the step needs: "0.05", "1.5e-3",
/// "12k", "600".
pub fn tick_label(v: f64, step: f64) -> String {
    // Round to the step's grid first so 0.30000000000000004 prints as 0.3.
    let v = (v / step).round() * step;
    if v == 0.0 {
        return "0".into();
    }
    let mag = v.abs();
    if step < 1e-3 || mag >= 1e7 {
        // Mantissa digits down to the step's decade, so neighbours differ.
        let p = (mag.log10().floor() - step.log10().floor()).clamp(0.0, 15.0) as usize;
        return trim_sci(&format!("{v:.p$e}"));
    }
    if mag >= 1e4 && step >= 100.0 {
        let d = decimals_for(step / 1000.0);
        return format!("{:.d$}k", v / 1000.0);
    }
    let d = decimals_for(step);
    format!("{v:.d$}")
}

fn decimals_for(step: f64) -> usize {
    if step >= 1.0 {
        0
    } else {
        (-step.log10() - 1e-9).ceil() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ticks_of_a_loss_range() {
        let t = nice_ticks(2.31, 10.9, 5);
        assert_eq!(t.step, 2.0);
        assert_eq!(t.values, vec![2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
        assert_eq!(t.labels(), ["2", "4", "6", "8", "10", "12"]);
    }

    #[test]
    fn ticks_of_a_learning_rate_use_scientific_labels() {
        let t = nice_ticks(0.0, 3e-3, 5);
        assert_eq!(t.labels(), ["0", "0.001", "0.002", "0.003"]);
        let t = nice_ticks(1e-4, 6e-4, 5);
        assert_eq!(t.labels(), ["1e-4", "2e-4", "3e-4", "4e-4", "5e-4", "6e-4"]);
    }

    #[test]
    fn ticks_of_fractions_have_the_decimals_they_need() {
        let t = nice_ticks(0.0, 1.0, 5);
        assert_eq!(t.labels(), ["0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let t = nice_ticks(0.41, 0.62, 5);
        assert_eq!(t.step, 0.05);
        assert_eq!(t.labels(), ["0.40", "0.45", "0.50", "0.55", "0.60", "0.65"]);
    }

    #[test]
    fn ticks_of_throughput_in_thousands() {
        let t = nice_ticks(11_800.0, 20_400.0, 5);
        assert_eq!(
            t.labels(),
            ["10k", "12k", "14k", "16k", "18k", "20k", "22k"]
        );
    }

    #[test]
    fn negative_ranges_and_flat_ranges() {
        let t = nice_ticks(-0.9, 0.3, 4);
        assert_eq!(t.labels(), ["-1.0", "-0.5", "0", "0.5"]);
        let flat = nice_ticks(3e-4, 3e-4, 5);
        assert!(flat.first() < 3e-4 && flat.last() > 3e-4);
        let zero = nice_ticks(0.0, 0.0, 5);
        assert!(zero.first() < 0.0 && zero.last() > 0.0);
    }

    #[test]
    fn step_axis_ticks_stay_inside_the_data() {
        let t = inner_ticks(1.0, 600.0, 6);
        assert_eq!(t.values, vec![100.0, 200.0, 300.0, 400.0, 500.0, 600.0]);
        let t = inner_ticks(0.0, 60.0, 6);
        assert_eq!(t.values, vec![0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0]);
    }

    proptest! {
        #[test]
        fn ticks_cover_the_range_evenly(lo in -1e6f64..1e6, span in 1e-6f64..1e6, n in 2usize..10) {
            let hi = lo + span;
            let t = nice_ticks(lo, hi, n);
            prop_assert!(t.first() <= lo && t.last() >= hi);
            prop_assert!(t.values.len() >= 2 && t.values.len() <= 2 * n + 3, "{} ticks", t.values.len());
            for w in t.values.windows(2) {
                prop_assert!(((w[1] - w[0]) - t.step).abs() <= t.step * 1e-6);
            }
            let labels = t.labels();
            let mut dedup = labels.clone();
            dedup.dedup();
            prop_assert_eq!(dedup.len(), labels.len(), "labels repeat: {:?}", labels);
        }
    }
}
