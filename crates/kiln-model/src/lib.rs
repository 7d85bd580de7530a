//! GPT-2 model: config, parameters, explicit forward/backward over a Backend, generation, checkpoints.
