//! What a case builder sees: the backend (for size queries such as the
//! attention workspace), its `info()`, and the seeded data generator.

use kiln_abi::{BackendBox, BackendInfo};

use crate::rng::Rng;

pub struct Env<'a> {
    pub be: &'a mut BackendBox,
    pub info: &'a BackendInfo,
    pub rng: Rng,
}
