//! Backend plugins through the stable ABI: the CPU backend loaded as a
//! plugin passes the conformance suite and trains bit for bit like the
//! built-in one (in-process and through the `kiln` binary's `--backend`);
//! a panicking plugin, a non-plugin file and an older host are refused with
//! short messages.
//!
//! Where the plugin libraries come from (first hit wins):
//! 1. next to this test binary (`target/<profile>/deps/`): the plugins are
//!    dev-dependencies of kiln-tests, so `cargo test` builds them fresh;
//! 2. `target/plugins/` (`cargo xtask plugins`), `target/debug/`,
//!    `target/release/`, under `$CARGO_TARGET_DIR` or the workspace's target/;
//! 3. otherwise the test runs `cargo build -p <plugin>` itself, and fails
//!    with a message saying what to run if that does not work.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use kiln_abi::abi_stable::library::lib_header_from_path;
use kiln_abi::loader::{explain, load_backend_plugin, LoadedBackendPlugin};
use kiln_abi::{BackendBox, BackendExt, DType, IntoBResult, MatmulArgs, KILN_ABI_VERSION};
use kiln_model::{Gpt, GptConfig};
use kiln_optim::{clip_scale, AdamW, AdamWConfig, ParamRef};

const CPU_PLUGIN: &str = "kiln-cpu-plugin";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if Path::new(&dir).is_absolute() => PathBuf::from(dir),
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

fn library_file(crate_name: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        crate_name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

fn candidate_paths(crate_name: &str) -> Vec<PathBuf> {
    let file = library_file(crate_name);
    let mut dirs = Vec::new();
    if let Some(deps) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(deps.clone());
        if let Some(profile) = deps.parent() {
            dirs.push(profile.to_path_buf());
        }
    }
    let target = target_dir();
    dirs.extend(["plugins", "debug", "release"].map(|d| target.join(d)));
    dirs.into_iter().map(|d| d.join(&file)).collect()
}

/// The shared library of plugin crate `crate_name`, building it if needed.
pub(crate) fn plugin_library(crate_name: &str) -> PathBuf {
    // One build at a time: tests run in parallel threads.
    static BUILD: Mutex<()> = Mutex::new(());
    let _lock = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let candidates = candidate_paths(crate_name);
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return found.clone();
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(&cargo)
        .args(["build", "-p", crate_name])
        .current_dir(workspace_root())
        .output();
    let built = target_dir().join("debug").join(library_file(crate_name));
    match output {
        Ok(out) if out.status.success() && built.is_file() => built,
        other => {
            let why = match other {
                Ok(out) if !out.status.success() => String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .rev()
                    .take(5)
                    .collect::<Vec<_>>()
                    .join(" / "),
                Ok(_) => format!("it succeeded but {} does not exist", built.display()),
                Err(e) => format!("cannot run {cargo}: {e}"),
            };
            panic!(
                "plugin {crate_name} not found (looked at {candidates:?}) and \
                 `cargo build -p {crate_name}` did not produce it: {why}. \
                 Run `cargo xtask plugins` first."
            )
        }
    }
}

fn load_cpu_plugin() -> LoadedBackendPlugin {
    let path = plugin_library(CPU_PLUGIN);
    load_backend_plugin(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn matmul_args(out: kiln_abi::BufId, a: kiln_abi::BufId, b: kiln_abi::BufId) -> MatmulArgs {
    MatmulArgs::new(out, a, b, 2, 2, 2)
}

#[test]
fn cpu_plugin_passes_the_conformance_suite() {
    let plugin = load_cpu_plugin();
    kiln_conformance::assert_conforms(|| plugin.new_backend("threads=2").unwrap());
}

#[test]
fn cpu_plugin_loads_and_describes_itself() {
    let plugin = load_cpu_plugin();
    assert_eq!(plugin.abi_version(), KILN_ABI_VERSION);
    assert!(
        plugin.name().starts_with("kiln-cpu-plugin "),
        "{}",
        plugin.name()
    );
    let mut be = plugin.new_backend("threads=2").unwrap();
    let info = be.info().unwrap();
    assert_eq!(info.name.as_str(), "cpu");
    assert!(
        info.device.as_str().contains("2 threads"),
        "{}",
        info.device
    );
    for dt in [DType::F32, DType::BF16, DType::F16, DType::U32] {
        assert!(
            info.dtypes.contains(&dt),
            "{dt} missing from {:?}",
            info.dtypes
        );
    }
}

#[test]
fn cpu_plugin_refuses_unknown_options() {
    let err = load_cpu_plugin()
        .new_backend("device=1")
        .err()
        .expect("unknown option must fail");
    assert!(err.contains("unknown option `device`"), "{err}");
    assert!(err.contains("threads=N"), "no hint: {err}");
}

#[test]
fn panic_inside_a_plugin_op_becomes_an_error_and_the_host_survives() {
    let plugin = load_cpu_plugin();
    let mut be = plugin.new_backend("threads=1,panic_on=matmul").unwrap();
    let a = be.from_f32(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    let out = be.alloc_buf(DType::F32, 4).unwrap();
    let err = be.matmul(matmul_args(out, a, a)).ok_or_err().unwrap_err();
    assert!(
        err.0.starts_with("panic in matmul: injected fault"),
        "{err}"
    );
    // The process is alive and the same backend still computes.
    be.add(out, a, a, 4).ok_or_err().unwrap();
    assert_eq!(be.download_f32(out).unwrap(), vec![2.0, 4.0, 6.0, 8.0]);
    // And a backend without the fault multiplies correctly through the ABI.
    let mut ok = plugin.new_backend("threads=1").unwrap();
    let a = ok.from_f32(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    let b = ok.from_f32(&[5.0, 6.0, 7.0, 8.0]).unwrap();
    let out = ok.alloc_buf(DType::F32, 4).unwrap();
    ok.matmul(matmul_args(out, a, b)).ok_or_err().unwrap();
    assert_eq!(ok.download_f32(out).unwrap(), vec![19.0, 22.0, 43.0, 50.0]);
}

#[test]
fn files_that_are_not_plugins_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join(library_file("notes"));
    std::fs::write(&text, "this is a text file\n").unwrap();
    let err = load_backend_plugin(&text).unwrap_err();
    assert!(
        err.reason.starts_with("cannot open it as a shared library"),
        "{err}"
    );

    let missing = dir.path().join(library_file("absent"));
    let err = load_backend_plugin(&missing).unwrap_err();
    assert!(
        err.reason.contains("no such file") && err.reason.contains("cargo xtask plugins"),
        "{err}"
    );

    // A real shared library that is not a plugin: the C math library.
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib/aarch64-linux-gnu/libm.so.6",
        "/usr/lib64/libm.so.6",
        "/lib64/libm.so.6",
        "/usr/lib/libm.so.6",
        "/usr/lib/libm.dylib",
    ]
    .iter()
    .map(Path::new)
    .find(|p| p.is_file());
    match libm {
        Some(libm) => {
            let err = load_backend_plugin(libm).unwrap_err();
            assert!(err.reason.starts_with("not a kiln plugin"), "{err}");
            assert_eq!(err.reason.lines().count(), 1, "{err}");
        }
        None => eprintln!("no system libm found: skipping the non-plugin shared-library case"),
    }
}

#[test]
fn several_plugins_of_one_interface_load_side_by_side() {
    // RootModule::load_from_file would hand back the first library for the
    // second path; the loader must not.
    let cpu = load_cpu_plugin();
    let next = load_backend_plugin(&plugin_library("kiln-test-abi-next"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(cpu.name().starts_with("kiln-cpu-plugin"), "{}", cpu.name());
    assert!(
        next.name().starts_with("kiln-test-abi-next"),
        "{}",
        next.name()
    );
}

#[test]
fn newer_host_refuses_an_older_plugin_that_lacks_a_root_field() {
    // kiln_test_abi_next::BackendPluginRef is the root module of the next
    // kiln-abi patch (one more field, declared optional). abi_stable 0.11
    // refuses a library whose prefix type has fewer fields than the host's
    // (abi_checking.rs: FieldCountMismatch when the host has more), so after
    // adding a root field every plugin must be rebuilt. The message says so.
    let path = plugin_library(CPU_PLUGIN);
    let header = lib_header_from_path(&path).unwrap_or_else(|e| panic!("{}", explain(&e)));
    match header.init_root_module::<kiln_test_abi_next::BackendPluginRef>() {
        Err(e) => {
            let why = explain(&e);
            println!("newer host, older plugin: {why}");
            assert!(why.starts_with("incompatible ABI:"), "{why}");
            assert!(why.contains("rebuild the plugin"), "{why}");
            assert_eq!(why.lines().count(), 1, "{why}");
        }
        Ok(module) => {
            // If abi_stable ever accepts it, the new field must read as absent.
            assert!(
                module.describe().is_none(),
                "an older plugin cannot have `describe`"
            );
            panic!("abi_stable now accepts older plugins in newer hosts: update docs/adr/0003-abi-stable.md and this test");
        }
    }
}

// ---- the key test: training through the plugin == built-in, bit for bit ----

/// Trains the tiny GPT for `steps` AdamW steps on fixed data; returns the
/// loss of every step and the final parameters.
fn train_tiny_gpt(be: &mut BackendBox, steps: usize) -> (Vec<f32>, Vec<Vec<f32>>) {
    let config = GptConfig::new(96, 16, 2, 2, 32);
    let (b, t) = (2, 16);
    let mut model = Gpt::new(be, config, 1234).unwrap();
    let params: Vec<ParamRef> = model
        .params()
        .iter()
        .map(|p| ParamRef {
            value: p.value,
            grad: p.grad.expect("a trainable parameter has a gradient buffer"),
            value_16: None,
            len: p.len(),
            decay: p.decay,
        })
        .collect();
    let mut opt = AdamW::new(be, &params, AdamWConfig::default()).unwrap();
    // Fixed, learnable data: a repeating pattern with a little structure.
    let stream: Vec<u32> = (0..(b * t + 1) as u32)
        .map(|i| (i * 7 + i / 5) % 96)
        .collect();
    let (tokens, targets) = (&stream[..b * t], &stream[1..]);
    let mut losses = Vec::new();
    for _ in 0..steps {
        model.zero_grad(be).unwrap();
        let loss = model
            .forward(be, tokens, Some(targets), b, t)
            .unwrap()
            .unwrap();
        model.backward(be, 1.0).unwrap();
        let (_norm, scale) = clip_scale(be, &params, Some(1.0)).unwrap();
        opt.step(be, &params, 3e-3, scale).unwrap();
        losses.push(loss);
    }
    let final_params = model.read_params(be).unwrap();
    (losses, final_params)
}

#[test]
fn training_through_the_plugin_matches_the_builtin_backend_bit_for_bit() {
    let steps = 5;
    let mut builtin = kiln_tensor::cpu_backend(Some(2));
    let mut plugin = load_cpu_plugin().new_backend("threads=2").unwrap();
    let (loss_builtin, params_builtin) = train_tiny_gpt(&mut builtin, steps);
    let (loss_plugin, params_plugin) = train_tiny_gpt(&mut plugin, steps);
    println!("built-in: {loss_builtin:?}\nplugin:   {loss_plugin:?}");
    assert!(loss_builtin.iter().all(|l| l.is_finite()));
    assert!(
        loss_builtin[steps - 1] < loss_builtin[0],
        "the model did not train: {loss_builtin:?}"
    );
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&loss_plugin), bits(&loss_builtin), "losses differ");
    assert_eq!(params_plugin.len(), params_builtin.len());
    for (i, (p, q)) in params_plugin.iter().zip(&params_builtin).enumerate() {
        assert!(
            bits(p) == bits(q),
            "parameter {i} differs after {steps} steps"
        );
    }
}

// ---- the same through the binary: --backend PATH / NAME / $KILN_BACKEND ----

mod binary {
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    use kiln_train::metrics::read_metrics;

    use super::{plugin_library, CPU_PLUGIN};
    use crate::cli::{kiln, kiln_bin, s};
    use crate::train::{byte_shards, loss_bits};

    fn stderr(o: &Output) -> String {
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    fn pretrain(data: &Path, out: &Path, backend: &str) -> Output {
        kiln(&[
            "pretrain",
            "--data",
            s(data),
            "--out",
            s(out),
            "--model",
            "tiny",
            "--steps",
            "4",
            "--batch-size",
            "4",
            "--seq-len",
            "32",
            "--lr",
            "3e-3",
            "--warmup",
            "1",
            "--seed",
            "7",
            "--threads",
            "2",
            "--backend",
            backend,
        ])
    }

    fn bytes(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn pretrain_and_sft_through_the_plugin_are_bit_identical_to_the_builtin_backend() {
        let dir = tempfile::tempdir().unwrap();
        let (data, _) = byte_shards(dir.path());
        let plugin = plugin_library(CPU_PLUGIN);
        let (cpu_run, plugin_run) = (dir.path().join("cpu"), dir.path().join("plugin"));
        let o = pretrain(&data, &cpu_run, "cpu");
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("backend: cpu (built in, kiln ABI 2)"),
            "{}",
            stderr(&o)
        );
        let o = pretrain(&data, &plugin_run, s(&plugin));
        assert!(o.status.success(), "{}", stderr(&o));
        let said = stderr(&o);
        assert!(
            said.contains("backend: kiln-cpu-plugin") && said.contains("kiln ABI 2"),
            "{said}"
        );
        assert!(
            said.contains(&plugin.display().to_string()),
            "the path loaded is not printed: {said}"
        );
        let (a, b) = (
            read_metrics(&cpu_run.join("metrics.jsonl")).unwrap(),
            read_metrics(&plugin_run.join("metrics.jsonl")).unwrap(),
        );
        assert_eq!(a.len(), 4);
        assert_eq!(
            loss_bits(&a),
            loss_bits(&b),
            "pretrain losses differ between backends"
        );
        let ck = "checkpoints/step_00000004/model.safetensors";
        assert!(
            bytes(&cpu_run.join(ck)) == bytes(&plugin_run.join(ck)),
            "pretrained weights differ"
        );

        // A post-training stage: SFT of a tiny chat model, the plugin named
        // through $KILN_BACKEND this time.
        let (base, chats) = sft_inputs(dir.path());
        let sft = |out: &Path, env_backend: Option<&Path>| {
            let mut cmd = Command::new(kiln_bin());
            cmd.args([
                "sft",
                "--model",
                s(&base),
                "--data",
                s(&chats),
                "--out",
                s(out),
                "--epochs",
                "2",
                "--batch-size",
                "2",
                "--lr",
                "1e-3",
                "--seed",
                "3",
                "--threads",
                "2",
            ])
            .env("RAYON_NUM_THREADS", "2")
            .env_remove("KILN_BACKEND");
            if let Some(p) = env_backend {
                cmd.env("KILN_BACKEND", p);
            }
            cmd.output().unwrap()
        };
        let (sft_cpu, sft_plugin) = (dir.path().join("sft_cpu"), dir.path().join("sft_plugin"));
        let o = sft(&sft_cpu, None);
        assert!(o.status.success(), "{}", stderr(&o));
        let o = sft(&sft_plugin, Some(&plugin));
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(
            stderr(&o).contains("backend: kiln-cpu-plugin"),
            "{}",
            stderr(&o)
        );
        let metrics = |d: &PathBuf| std::fs::read_to_string(d.join("metrics.jsonl")).unwrap();
        let losses = |text: String| -> Vec<String> {
            text.lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    format!("{} {} {}", v["split"], v["step"], v["loss"])
                })
                .collect()
        };
        assert_eq!(
            losses(metrics(&sft_cpu)),
            losses(metrics(&sft_plugin)),
            "SFT losses differ"
        );
        let model = "model/model.safetensors";
        assert!(
            bytes(&sft_cpu.join(model)) == bytes(&sft_plugin.join(model)),
            "SFT weights differ"
        );
    }

    /// A tiny chat model (policy directory with its tokenizer) and a few chats.
    fn sft_inputs(root: &Path) -> (PathBuf, PathBuf) {
        let specials = kiln_tokenizer::chat::default_special_tokens();
        let refs: Vec<&str> = specials.iter().map(String::as_str).collect();
        let corpus = [
            "Say hello. Hello there!",
            "Name a fruit. An apple is a fruit.",
        ];
        let tok =
            kiln_tokenizer::train(&corpus, 300, kiln_tokenizer::Pattern::Gpt2, &refs, 0).unwrap();
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let cfg = kiln_model::GptConfig::new(tok.vocab_size(), 48, 1, 2, 32);
        let model = kiln_model::Gpt::new(&mut be, cfg, 1).unwrap();
        let base = root.join("base");
        kiln_align::policy::Policy::new(model, tok)
            .unwrap()
            .save(&mut be, &base)
            .unwrap();
        let line = |q: &str, a: &str| {
            serde_json::json!({"messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": a}
            ]})
            .to_string()
        };
        let lines = [
            line("Say hello.", "Hello there!"),
            line("Name a fruit.", "An apple."),
            line("Say hi.", "Hi!"),
            line("Name a color.", "Red."),
        ];
        let chats = root.join("chats.jsonl");
        std::fs::write(&chats, lines.join("\n") + "\n").unwrap();
        (base, chats)
    }

    #[test]
    fn plugins_test_runs_the_suite_and_a_bad_backend_exits_2_with_the_fix() {
        let plugin = plugin_library(CPU_PLUGIN);
        let o = kiln(&["plugins", "test", s(&plugin), "--options", "threads=2"]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{out}{}", stderr(&o));
        assert!(out.contains(" 0 failed"), "{out}");
        assert!(out.contains("plugin:  kiln-cpu-plugin"), "{out}");

        let dir = tempfile::tempdir().unwrap();
        let (data, _) = byte_shards(dir.path());
        let o = pretrain(&data, &dir.path().join("r"), "no-such-backend");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains("no plugin of that name") && err.contains("--backend cpu"),
            "{err}"
        );
        let o = pretrain(&data, &dir.path().join("r"), "./missing/libnone.so");
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("no such plugin file"), "{err}");
    }
}
