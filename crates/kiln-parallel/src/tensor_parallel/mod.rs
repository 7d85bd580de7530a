//! Tensor parallelism after Megatron-LM (in progress): attention split by
//! heads, the MLP column- then row-parallel, a vocab-parallel embedding and
//! loss, and the f/g conjugate collectives.
