//! Checks of the methods that are not case-shaped ops: buffers, views,
//! `info`, `host_region`, the workspace query, and the communicator.

pub mod buffers;
pub mod comm;
