//! What the loader says about plugins built against another kiln-abi.
//!
//! The test plugins (plugins/kiln-test-abi-*) are dev-dependencies, so cargo
//! builds their shared libraries next to this test binary (target/*/deps/).
//! Each one compiles kiln-abi's own interface sources under a different
//! package version or with one change (see their build.rs).

use std::path::PathBuf;

use kiln_abi::loader::load_backend_plugin;

/// The shared library of test-plugin crate `name` (built as a dev-dependency).
fn test_plugin(name: &str) -> PathBuf {
    let file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    );
    let exe = std::env::current_exe().expect("test binary path");
    let deps = exe.parent().expect("test binary folder");
    let candidates = [deps.join(&file), deps.join("..").join(&file)];
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "test plugin {file} not found in {}; it is a dev-dependency of kiln-abi, \
                 so `cargo test -p kiln-abi` builds it (run `cargo build -p {name}` if you \
                 run this binary by hand)",
                deps.display()
            )
        })
}

/// A refusal a user can read: one line, short, with what to do.
fn assert_short_with_fix(reason: &str) {
    assert_eq!(reason.lines().count(), 1, "not one line: {reason}");
    assert!(
        reason.len() < 400,
        "too long ({} chars): {reason}",
        reason.len()
    );
    assert!(reason.contains("rebuild the plugin"), "no fix: {reason}");
}

#[test]
fn older_kiln_abi_version_is_refused_with_both_versions() {
    let path = test_plugin("kiln-test-abi-old");
    let err = load_backend_plugin(&path).expect_err("an old plugin must be refused");
    println!("{err}");
    assert!(err.reason.starts_with("incompatible ABI:"), "{err}");
    assert!(
        err.reason.contains("0.0.9"),
        "plugin's version missing: {err}"
    );
    let ours = env!("CARGO_PKG_VERSION");
    let ours_minor: String = ours.split('.').take(2).collect::<Vec<_>>().join(".");
    assert!(
        err.reason.contains(&ours_minor),
        "host's version missing: {err}"
    );
    assert_short_with_fix(&err.reason);
    assert_eq!(err.path, path);
}

#[test]
fn changed_method_signature_is_refused_naming_the_difference() {
    let path = test_plugin("kiln-test-abi-layout");
    let err = load_backend_plugin(&path).expect_err("a changed layout must be refused");
    println!("{err}");
    assert!(err.reason.starts_with("incompatible ABI:"), "{err}");
    // The plugin's step_control takes max_norm as f64 where this kiln's takes f32.
    assert!(
        err.reason.contains("f64") && err.reason.contains("f32"),
        "{err}"
    );
    // ...and the message says where: the Backend method behind new_backend.
    assert!(err.reason.contains("new_backend > step_control"), "{err}");
    assert_short_with_fix(&err.reason);
}

#[test]
fn newer_plugin_with_an_added_root_field_loads_in_this_host() {
    // Prefix types: a host reads the fields it knows; the plugin's extra
    // field (after `last_prefix_field`) is simply not seen.
    let path = test_plugin("kiln-test-abi-next");
    let plugin = load_backend_plugin(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(plugin.abi_version(), kiln_abi::KILN_ABI_VERSION);
    assert!(
        plugin.name().starts_with("kiln-test-abi-next "),
        "{}",
        plugin.name()
    );
    let err = plugin
        .new_backend("threads=1")
        .err()
        .expect("it has no backend");
    assert!(
        err.contains("has no backend") && err.contains("threads=1"),
        "{err}"
    );
}

#[test]
fn loading_twice_gives_the_same_module() {
    // Libraries are never unloaded; a second load is the same module, not a
    // second copy (and not the first plugin of another path: no caching by type).
    let a = load_backend_plugin(&test_plugin("kiln-test-abi-next")).unwrap();
    let b = load_backend_plugin(&test_plugin("kiln-test-abi-next")).unwrap();
    assert_eq!(a.name(), b.name());
    assert!(std::ptr::eq(
        a.module.abi_version() as *const (),
        b.module.abi_version() as *const ()
    ));
}
