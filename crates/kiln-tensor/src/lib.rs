//! Host arrays, 16-bit dtypes and the built-in multi-threaded CPU backend.
