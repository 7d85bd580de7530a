//! Exact resume through kiln-train's API: 20 steps straight == 10 steps,
//! checkpoint, a fresh trainer (new backend, model loaded from disk) for the
//! other 10, bit for bit. The kill-and-resume test of the binary is in `cli`.

use kiln_train::checkpoint::{checkpoint_dir, latest_checkpoint, list_checkpoints};
use kiln_train::metrics::read_metrics;
use kiln_train::{Init, Quiet, Trainer};

use crate::train::{byte_shards, loss_bits, tiny_config, train};

#[test]
fn ten_plus_resumed_ten_equals_twenty_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let mut c = tiny_config(20);
    c.grad_accum = 2;
    let straight = train(c.clone(), &data, &dir.path().join("straight"));
    assert_eq!(straight.len(), 20);

    let run = dir.path().join("split");
    {
        let be = kiln_tensor::cpu_backend(Some(2));
        let mut t = Trainer::start(be, c.clone(), &data, &run, Init::Preset).unwrap();
        for _ in 0..10 {
            t.train_step(&mut Quiet).unwrap();
        }
        t.save_checkpoint(&mut Quiet).unwrap();
        // a few more steps that the checkpoint does not hold: a "crash" here
        for _ in 0..3 {
            t.train_step(&mut Quiet).unwrap();
        }
    }
    let (step, ck) = latest_checkpoint(&run).unwrap().unwrap();
    assert_eq!(step, 10);
    let be = kiln_tensor::cpu_backend(Some(2));
    let mut t = Trainer::resume(be, c, &data, &run, &ck).unwrap();
    let summary = t.run(&mut Quiet).unwrap();
    assert_eq!(summary.steps, 20);
    let resumed = read_metrics(&run.join("metrics.jsonl")).unwrap();
    // steps 11..13 of the crashed process were dropped and rewritten once
    assert_eq!(
        resumed.iter().map(|r| r.step).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    assert_eq!(loss_bits(&straight), loss_bits(&resumed));
    // the final weights agree too
    let final_a =
        std::fs::read(checkpoint_dir(&dir.path().join("straight"), 20).join("model.safetensors"))
            .unwrap();
    let final_b = std::fs::read(checkpoint_dir(&run, 20).join("model.safetensors")).unwrap();
    assert!(final_a == final_b, "final weights differ");
}

#[test]
fn half_written_checkpoints_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let run = dir.path().join("run");
    let mut c = tiny_config(4);
    c.checkpoint_every = 2;
    train(c.clone(), &data, &run);
    let steps: Vec<u64> = list_checkpoints(&run)
        .unwrap()
        .iter()
        .map(|x| x.0)
        .collect();
    assert_eq!(steps, vec![2, 4]);
    // a temp dir from a kill during a write, and a step dir missing a file
    let ckdir = run.join("checkpoints");
    std::fs::create_dir_all(ckdir.join(".step_00000006.tmp")).unwrap();
    std::fs::write(ckdir.join(".step_00000006.tmp/config.json"), "{").unwrap();
    let partial = ckdir.join("step_00000008");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::copy(
        ckdir.join("step_00000004/config.json"),
        partial.join("config.json"),
    )
    .unwrap();
    assert_eq!(latest_checkpoint(&run).unwrap().unwrap().0, 4);
    // resuming continues from 4 toward a larger total and writes step 6 cleanly
    c.steps = 6;
    let be = kiln_tensor::cpu_backend(Some(2));
    let ck = checkpoint_dir(&run, 4);
    let mut t = Trainer::resume(be, c.clone(), &data, &run, &ck).unwrap();
    t.run(&mut Quiet).unwrap();
    assert_eq!(latest_checkpoint(&run).unwrap().unwrap().0, 6);
    assert!(!ckdir.join(".step_00000006.tmp").exists());
    // a fresh start into a run dir with checkpoints is refused, nothing touched
    let before = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let be = kiln_tensor::cpu_backend(Some(2));
    let err = Trainer::start(be, c.clone(), &data, &run, Init::Preset)
        .err()
        .unwrap();
    assert!(err.to_string().contains("--resume"), "{err}");
    assert_eq!(before, std::fs::read(run.join("metrics.jsonl")).unwrap());
    // resuming with a setting that changes the numbers is refused
    let mut other = c;
    other.lr *= 2.0;
    let be = kiln_tensor::cpu_backend(Some(2));
    let err = Trainer::resume(be, other, &data, &run, &ck).err().unwrap();
    assert!(err.to_string().contains("lr"), "{err}");
}

/// Pretraining a Llama-family model (here Qwen2-style: GQA, q/k/v biases,
/// tied embeddings) started from its checkpoint directory: the loss falls,
/// and 10 steps + a resumed 10 equal 20 straight, bit for bit.
#[test]
fn a_llama_model_pretrains_and_resumes_bit_for_bit() {
    use kiln_model::{Gpt, GptConfig, LlamaFamily};
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let init = dir.path().join("init");
    {
        let mut be = kiln_tensor::cpu_backend(Some(1));
        let cfg = GptConfig::new_llama(LlamaFamily::Qwen2, 256, 32, 2, 4, 2, 32, 48, true);
        let gpt = Gpt::new(&mut be, cfg, 9).unwrap();
        gpt.save_pretrained(&mut be, &init).unwrap();
    }
    let mut c = tiny_config(20);
    c.model = "init".into();
    let run_from = |c: &kiln_train::TrainConfig, run: &std::path::Path, steps: usize| {
        let be = kiln_tensor::cpu_backend(Some(2));
        let mut t = Trainer::start(be, c.clone(), &data, run, Init::Checkpoint(&init)).unwrap();
        for _ in 0..steps {
            t.train_step(&mut Quiet).unwrap();
        }
        t.save_checkpoint(&mut Quiet).unwrap();
    };
    let straight = dir.path().join("straight");
    run_from(&c, &straight, 20);
    let run = dir.path().join("split");
    run_from(&c, &run, 10);
    let (step, ck) = latest_checkpoint(&run).unwrap().unwrap();
    assert_eq!(step, 10);
    let be = kiln_tensor::cpu_backend(Some(2));
    let mut t = Trainer::resume(be, c, &data, &run, &ck).unwrap();
    assert_eq!(t.run(&mut Quiet).unwrap().steps, 20);
    let a = read_metrics(&straight.join("metrics.jsonl")).unwrap();
    let b = read_metrics(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(loss_bits(&a), loss_bits(&b));
    assert!(
        a[19].loss < a[0].loss - 0.5,
        "loss {} -> {}",
        a[0].loss,
        a[19].loss
    );
    let weights = |r: &std::path::Path| {
        std::fs::read(checkpoint_dir(r, 20).join("model.safetensors")).unwrap()
    };
    assert!(weights(&straight) == weights(&run), "final weights differ");
}

/// `--model llama-tiny`: a Llama-family preset pretrains from kiln's init.
#[test]
fn the_llama_tiny_preset_pretrains() {
    let dir = tempfile::tempdir().unwrap();
    let (data, _) = byte_shards(dir.path());
    let mut c = tiny_config(20);
    c.model = "llama-tiny".into();
    let recs = train(c, &data, &dir.path().join("run"));
    assert_eq!(recs.len(), 20);
    assert!(
        recs[19].loss < recs[0].loss - 0.5,
        "loss {} -> {}",
        recs[0].loss,
        recs[19].loss
    );
    let ck = checkpoint_dir(&dir.path().join("run"), 20);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
}
