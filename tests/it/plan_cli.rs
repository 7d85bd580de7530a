//! `kiln plan`: the layout planner through the binary.

use crate::cli::kiln;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The ranked rows of the table: (dp, tp, pp, GiB per GPU, step seconds).
fn rows(out: &str) -> Vec<(usize, usize, usize, f64, f64)> {
    out.lines()
        .skip_while(|l| !l.trim_start().starts_with("rank"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].parse().unwrap(),
                f[8].parse().unwrap(),
                f[9].parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn gpt2_on_one_node_ranks_layouts_that_fit_fastest_first() {
    let o = kiln(&[
        "plan",
        "--model",
        "gpt2-124m",
        "--gpus",
        "8",
        "--gpu",
        "h100",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("124.4M parameters") && out.contains("calibrated"),
        "{out}"
    );
    let rows = rows(&out);
    assert_eq!(rows.len(), 5, "{out}");
    for (dp, tp, pp, gib, _) in &rows {
        assert_eq!(dp * tp * pp, 8, "{out}");
        assert!(*gib <= 72.0, "{out}");
    }
    assert!(
        rows.windows(2).all(|w| w[0].4 <= w[1].4),
        "not ranked by step time:\n{out}"
    );
    assert!(out.contains("best layout, memory per GPU"), "{out}");
}

#[test]
fn a_model_too_large_for_the_gpus_is_an_error_that_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"num_hidden_layers": 80, "hidden_size": 8192, "num_attention_heads": 64,
            "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 128256,
            "max_position_embeddings": 8192}"#,
    )
    .unwrap();
    let model = config.to_str().unwrap();
    let o = kiln(&[
        "plan",
        "--model",
        model,
        "--gpus",
        "8",
        "--gpu",
        "a100",
        "--seq-len",
        "4096",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(
        err.contains("no layout") && err.contains("add GPUs"),
        "{err}"
    );
    assert!(
        out.contains("do not fit") && out.contains("optimizer"),
        "{out}"
    );
    // Four nodes of H200 hold it.
    let o = kiln(&[
        "plan",
        "--model",
        model,
        "--gpus",
        "8",
        "--gpu",
        "h200",
        "--nodes",
        "4",
        "--seq-len",
        "4096",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(rows(&stdout(&o)).iter().all(|r| r.0 * r.1 * r.2 == 32));
}

#[test]
fn constraints_that_no_layout_meets_are_explained() {
    let o = kiln(&[
        "plan",
        "--model",
        "gpt2-124m",
        "--gpus",
        "8",
        "--gpu",
        "h100",
        "--tp",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("tp 5"), "{}", stderr(&o));
    let o = kiln(&[
        "plan",
        "--model",
        "gpt2-124m",
        "--gpus",
        "16",
        "--gpu",
        "h100",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--nodes"), "{}", stderr(&o));
    let o = kiln(&["plan", "--model", "gpt3", "--gpus", "8", "--gpu", "h100"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("gpt3") && stderr(&o).contains("gpt2-124m"),
        "{}",
        stderr(&o)
    );
}
