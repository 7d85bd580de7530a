//! AdamW, learning-rate schedules, gradient clipping, mixed-precision policy.
