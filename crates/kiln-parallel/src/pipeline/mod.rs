//! Pipeline parallelism (in progress): the layers split into stages,
//! micro-batches scheduled 1F1B (GPipe as the simple reference), and
//! activations and gradients passed between stages with send/recv.
