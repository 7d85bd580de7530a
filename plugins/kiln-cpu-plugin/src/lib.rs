//! Placeholder: the CPU backend as a plugin.
