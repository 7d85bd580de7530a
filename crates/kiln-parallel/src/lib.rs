//! Parallel training for kiln.
//!
//! Today this crate holds the layout planner ([`plan`]): on paper, what no
//! machine here can run. Given a model, a GPU type and a GPU count it
//! enumerates data x tensor x pipeline layouts, predicts each one's memory per
//! device (Korthikanti et al. 2022) and step time (Narayanan et al. 2021's
//! FLOPs, ring costs for the collectives), and ranks the ones that fit.
//!
//! - [`comm`]: the [`comm::Communicator`] contract (rank-ordered sums,
//!   deadlines, poisoning), [`comm::ThreadComm`] and the process grid.
//! - [`data_parallel`]: gradient buckets, ZeRO-1 shards and the cross-rank
//!   step agreement the trainer's data-parallel step uses.
//! - [`tensor_parallel`] and [`pipeline`]: the model-parallel dimensions,
//!   one module each, exact against one process (no optimizer step or CLI
//!   yet).
//! - [`launch`]: whether `mpirun`/`srun` started this process as one rank of
//!   several (read from the launcher's environment).

pub mod comm;
pub mod data_parallel;
pub mod launch;
pub mod pipeline;
pub mod plan;
pub mod tensor_parallel;
