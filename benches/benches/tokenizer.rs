//! Tokenizer benchmarks against the peers, same inputs, same process:
//! - encode throughput (1 thread and all threads): kiln vs tiktoken-rs vs
//!   HF `tokenizers` (fed kiln's tokenizer.json export of the same ranks);
//! - training a 32k vocabulary: kiln vs HF BpeTrainer, time and peak RSS
//!   (each in a child process, so peaks are separate), and bytes/token of
//!   both trained tokenizers on held-out text.
//!
//! Ratios are printed; criterion then records kiln's own throughput.
//! Corpus: this workspace's Rust sources, the system's licence texts
//! (/usr/share/common-licenses), vim's documentation (/usr/share/vim/vim90/doc,
//! when installed) and generated multilingual text; or the files named by
//! KILN_BENCH_CORPUS (comma separated). Encoding uses an evenly spread
//! ~2 MB sample of the documents; training uses 90% of all of them (capped
//! at 8 MB) and measures compression on the rest.

use criterion::{Criterion, Throughput};
use kiln_tokenizer::formats::hf;
use kiln_tokenizer::{Pattern, Tokenizer};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "KILN_TOK_BENCH_CHILD";

fn walk(p: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(p) {
        let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        v.sort();
        for e in v {
            if e.is_dir() {
                walk(&e, ext, out);
            } else if e.extension().is_some_and(|x| x == ext) {
                out.push(e);
            }
        }
    }
}

const MULTI: &[&str] = &[
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe, Maß, Äpfel. ",
    "Le cœur a ses raisons que la raison ne connaît point. « Déjà vu » — c'est ça. ",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. Москва 2024 г. ",
    "我能吞下玻璃而不伤身体。北京是中国的首都，人口约2100万。",
    "私はガラスを食べられます。それは私を傷つけません。東京タワー。",
    "나는 유리를 먹을 수 있어요. 그래도 아프지 않아요. ",
    "أنا قادر على أكل الزجاج و هذا لا يؤلمني. ",
    "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती। ",
    "Tôi có thể ăn thủy tinh mà không hại gì. 😀👍🏽 1234567 ",
];

/// Documents of roughly 10 kB.
fn corpus() -> Vec<String> {
    let mut texts = Vec::new();
    if let Ok(list) = std::env::var("KILN_BENCH_CORPUS") {
        for f in list.split(',') {
            texts.push(std::fs::read_to_string(f).expect("KILN_BENCH_CORPUS file"));
        }
    } else {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files = Vec::new();
        walk(&root.join("crates"), "rs", &mut files);
        // English technical prose, where installed (Debian's vim-runtime).
        walk(Path::new("/usr/share/vim/vim90/doc"), "txt", &mut files);
        for f in std::fs::read_dir("/usr/share/common-licenses")
            .into_iter()
            .flatten()
            .flatten()
        {
            files.push(f.path());
        }
        for f in files {
            if let Ok(s) = std::fs::read_to_string(&f) {
                texts.push(s);
            }
        }
        let mut x = 0x9E3779B97F4A7C15u64;
        let mut m = String::new();
        while m.len() < 600_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            m.push_str(MULTI[(x % MULTI.len() as u64) as usize]);
        }
        texts.push(m);
    }
    let mut docs = Vec::new();
    for t in texts {
        let mut rest = t.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(10_000);
            while !rest.is_char_boundary(cut) {
                cut += 1;
            }
            docs.push(rest[..cut].to_string());
            rest = &rest[cut..];
        }
    }
    docs
}

fn tiktoken_assets() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cargo"));
    for reg in std::fs::read_dir(home.join("registry/src"))
        .expect("cargo registry")
        .flatten()
    {
        let p = reg.path().join("tiktoken-rs-0.12.1/assets");
        if p.is_dir() {
            return p;
        }
    }
    panic!("tiktoken-rs 0.12.1 assets not found; run cargo fetch");
}

/// Best of `reps` wall times.
fn best(reps: usize, mut f: impl FnMut()) -> Duration {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

fn encode_compare(docs: &[String], c: &mut Criterion) {
    let bytes: usize = docs.iter().map(String::len).sum();
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
    println!(
        "\n== encode: {} docs, {:.1} MB, {} rayon threads ==",
        docs.len(),
        bytes as f64 / 1e6,
        rayon::current_num_threads()
    );
    let assets = tiktoken_assets();
    type Ctor = fn() -> anyhow_free::R;
    let encs: [(&str, Ctor); 3] = [
        ("r50k_base", || {
            tiktoken_rs::r50k_base().map_err(|e| e.to_string())
        }),
        ("cl100k_base", || {
            tiktoken_rs::cl100k_base().map_err(|e| e.to_string())
        }),
        ("o200k_base", || {
            tiktoken_rs::o200k_base().map_err(|e| e.to_string())
        }),
    ];
    for (name, ctor) in encs {
        let kiln = kiln_tokenizer::formats::tiktoken::load(
            &assets.join(format!("{name}.tiktoken")),
            Some(name),
        )
        .unwrap();
        let tt = ctor().unwrap();
        let hf_tok = tokenizers::Tokenizer::from_str(&hf::to_string(&kiln).unwrap()).unwrap();
        // correctness guard: same ids on the first docs
        for d in refs.iter().take(20) {
            assert_eq!(kiln.encode_ordinary(d), tt.encode_ordinary(d));
        }
        let k1 = best(3, || {
            for d in &refs {
                std::hint::black_box(kiln.encode_ordinary(d));
            }
        });
        let t1 = best(3, || {
            for d in &refs {
                std::hint::black_box(tt.encode_ordinary(d));
            }
        });
        let h1 = best(1, || {
            for d in &refs {
                std::hint::black_box(hf_tok.encode_fast(*d, false).unwrap());
            }
        });
        let kn = best(3, || {
            std::hint::black_box(
                kiln.encode_batch(&refs, &kiln_tokenizer::SpecialPolicy::all_text())
                    .unwrap(),
            );
        });
        let tn = best(3, || {
            let v: Vec<Vec<u32>> = refs.par_iter().map(|d| tt.encode_ordinary(d)).collect();
            std::hint::black_box(v);
        });
        let hn = best(1, || {
            std::hint::black_box(hf_tok.encode_batch_fast(refs.clone(), false).unwrap());
        });
        println!(
            "{name:12} 1 thread: kiln {:7.1} MB/s  tiktoken-rs {:6.1} MB/s  HF {:5.1} MB/s  | kiln/tiktoken {:4.2}x  kiln/HF {:5.1}x",
            mbps(bytes, k1),
            mbps(bytes, t1),
            mbps(bytes, h1),
            t1.as_secs_f64() / k1.as_secs_f64(),
            h1.as_secs_f64() / k1.as_secs_f64()
        );
        println!(
            "{name:12} all threads: kiln {:6.1} MB/s  tiktoken-rs {:6.1} MB/s  HF {:5.1} MB/s  | kiln/tiktoken {:4.2}x  kiln/HF {:5.1}x  (kiln scaling {:.2}x)",
            mbps(bytes, kn),
            mbps(bytes, tn),
            mbps(bytes, hn),
            tn.as_secs_f64() / kn.as_secs_f64(),
            hn.as_secs_f64() / kn.as_secs_f64(),
            k1.as_secs_f64() / kn.as_secs_f64()
        );
        let mut g = c.benchmark_group(format!("encode_1t_{name}"));
        g.throughput(Throughput::Bytes(bytes as u64));
        g.sample_size(10).measurement_time(Duration::from_secs(3));
        g.bench_function("kiln", |b| {
            b.iter(|| {
                for d in &refs {
                    std::hint::black_box(kiln.encode_ordinary(d));
                }
            })
        });
        g.finish();
    }
}

mod anyhow_free {
    pub type R = Result<tiktoken_rs::CoreBPE, String>;
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Child process: train one tokenizer, print "seconds peak_rss_kb".
fn child(role: &str) {
    let mut args = std::env::args().skip_while(|a| a != "--child-args").skip(1);
    let input = args.next().expect("input");
    let vocab: usize = args.next().expect("vocab").parse().unwrap();
    let out = args.next().expect("output");
    let t0 = Instant::now();
    match role {
        "kiln" => {
            let text = std::fs::read_to_string(&input).unwrap();
            // One document per line, as HF's train_from_files reads it.
            let lines: Vec<&str> = text.split_inclusive('\n').collect();
            let mut tr = kiln_tokenizer::Trainer::new(kiln_tokenizer::TrainConfig {
                vocab_size: vocab,
                pattern: Pattern::Cl100k,
                special_tokens: vec!["<|endoftext|>".into()],
                min_frequency: 0,
            })
            .unwrap();
            tr.feed(&lines);
            let tok = tr.finish().unwrap();
            let secs = t0.elapsed().as_secs_f64();
            hf::save(&tok, Path::new(&out)).unwrap();
            println!("{secs} {}", peak_rss_kb());
        }
        "hf" => {
            use tokenizers::models::bpe::BpeTrainerBuilder;
            use tokenizers::models::TrainerWrapper;
            use tokenizers::AddedToken;
            let json = serde_json_free(Pattern::Cl100k.hf_regex());
            let mut tok = tokenizers::Tokenizer::from_str(&json).unwrap();
            let alphabet = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
                .into_iter()
                .collect();
            let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
                .vocab_size(vocab)
                .min_frequency(0)
                .show_progress(false)
                .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
                .initial_alphabet(alphabet)
                .build()
                .into();
            tok.train_from_files(&mut trainer, vec![input]).unwrap();
            let secs = t0.elapsed().as_secs_f64();
            tok.save(&out, false).unwrap();
            println!("{secs} {}", peak_rss_kb());
        }
        _ => panic!("unknown child role {role}"),
    }
}

/// An untrained HF BPE tokenizer.json with the given Split regex.
fn serde_json_free(regex: &str) -> String {
    let esc: String = regex
        .chars()
        .flat_map(|c| match c {
            '\\' => vec!['\\', '\\'],
            '"' => vec!['\\', '"'],
            '\n' => vec!['\\', 'n'],
            '\r' => vec!['\\', 'r'],
            c => vec![c],
        })
        .collect();
    format!(
        r#"{{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
"pre_tokenizer":{{"type":"Sequence","pretokenizers":[{{"type":"Split","pattern":{{"Regex":"{esc}"}},"behavior":"Isolated","invert":false}},{{"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false}}]}},
"post_processor":null,"decoder":{{"type":"ByteLevel","add_prefix_space":true,"trim_offsets":true,"use_regex":true}},
"model":{{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,"vocab":{{}},"merges":[]}}}}"#
    )
}

fn run_child(role: &str, input: &Path, vocab: usize, out: &Path) -> (f64, u64) {
    let exe = std::env::current_exe().unwrap();
    let o = Command::new(exe)
        .env(CHILD_ENV, role)
        .arg("--child-args")
        .arg(input)
        .arg(vocab.to_string())
        .arg(out)
        .output()
        .expect("child runs");
    assert!(
        o.status.success(),
        "{role}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = String::from_utf8_lossy(&o.stdout);
    let line = s.lines().last().unwrap_or("");
    let mut it = line.split_whitespace();
    (
        it.next().and_then(|x| x.parse().ok()).unwrap_or(f64::NAN),
        it.next().and_then(|x| x.parse().ok()).unwrap_or(0),
    )
}

fn train_compare(docs: &[String]) {
    let split = docs.len() * 9 / 10;
    let (train_docs, held) = docs.split_at(split);
    let dir = std::env::temp_dir().join(format!("kiln-tok-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("train.txt");
    std::fs::write(&input, train_docs.concat()).unwrap();
    let mb = std::fs::metadata(&input).unwrap().len() as f64 / 1e6;
    let vocab = 32768;
    println!("\n== train: vocab {vocab}, {mb:.1} MB, GPT-4 pattern ==");
    let kiln_out = dir.join("kiln.json");
    let hf_out = dir.join("hf.json");
    let (ks, kr) = run_child("kiln", &input, vocab, &kiln_out);
    let (hs, hr) = run_child("hf", &input, vocab, &hf_out);
    println!(
        "kiln {ks:6.2} s, peak RSS {:6.1} MB | HF BpeTrainer {hs:6.2} s, peak RSS {:6.1} MB | speedup {:.2}x, memory ratio {:.2}",
        kr as f64 / 1024.0,
        hr as f64 / 1024.0,
        hs / ks,
        kr as f64 / hr as f64
    );
    let kiln_tok: Tokenizer = hf::load(&kiln_out).unwrap();
    let hf_tok = tokenizers::Tokenizer::from_file(&hf_out).unwrap();
    let bytes: usize = held.iter().map(String::len).sum();
    let kt: usize = held.iter().map(|d| kiln_tok.encode_ordinary(d).len()).sum();
    let ht: usize = held
        .iter()
        .map(|d| hf_tok.encode_fast(d.as_str(), false).unwrap().len())
        .sum();
    let (kb, hb) = (bytes as f64 / kt as f64, bytes as f64 / ht as f64);
    println!(
        "held-out {:.2} MB: bytes/token kiln {kb:.4}, HF {hb:.4} (kiln/HF {:.4})",
        bytes as f64 / 1e6,
        kb / hb
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() {
    if let Ok(role) = std::env::var(CHILD_ENV) {
        child(&role);
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    let mut docs = corpus();
    // Interleave sources so any prefix or sample is mixed.
    let n = docs.len();
    let stride = 7usize;
    docs = (0..stride)
        .flat_map(|k| (k..n).step_by(stride))
        .map(|i| docs[i].clone())
        .collect();
    let total: usize = docs.iter().map(String::len).sum();
    let every = (total / 2_000_000).max(1);
    let sample: Vec<String> = docs.iter().step_by(every).cloned().collect();
    encode_compare(&sample, &mut c);
    let mut cap = 0;
    let train_docs: Vec<String> = docs
        .into_iter()
        .take_while(|d| {
            cap += d.len();
            cap <= 8_900_000
        })
        .collect();
    train_compare(&train_docs);
    c.final_summary();
}
