//! Parallel training for kiln.
//!
//! Today this crate holds the layout planner ([`plan`]): on paper, what no
//! machine here can run. Given a model, a GPU type and a GPU count it
//! enumerates data x tensor x pipeline layouts, predicts each one's memory per
//! device (Korthikanti et al. 2022) and step time (Narayanan et al. 2021's
//! FLOPs, ring costs for the collectives), and ranks the ones that fit.
//! The communicator and the data, tensor and pipeline parallel training loops
//! come next, one file per parallel dimension.

pub mod plan;
