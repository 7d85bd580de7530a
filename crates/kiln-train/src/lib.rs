//! Training loop: model + optimizer + data loader + checkpoints/resume + metrics.
