//! The built-in CPU backend passes the whole suite.

#[test]
fn the_builtin_cpu_backend_conforms() {
    kiln_conformance::assert_conforms(|| kiln_tensor::cpu_backend(Some(2)));
}
