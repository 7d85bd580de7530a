//! `kiln report` end to end: a synthetic run directory in (shaped like
//! `kiln pipeline`'s), report.html out, then the page opened in a real
//! headless Chromium (where one is installed): the first 1280x800 screen
//! must hold the results (the judge chart among them), no element may
//! stick out of its card (scrollWidth against clientWidth, measured in the
//! DOM at two widths), and the DOM must hold every section, the charts, and
//! model outputs as text.
//!
//! Set KILN_REPORT_SCREENSHOT=/some/file.png to keep the screenshot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::cli::{kiln, s};

const STAGES_WITH_METRICS: [&str; 5] = ["pretrain", "sft", "reward", "dpo", "ppo"];
const MODELS: [&str; 4] = ["pretrain", "sft", "dpo", "ppo"];
/// A model output that would run script if the page did not escape it.
const INJECTION: &str = "<img src=x onerror=alert(1)> <b>bold?</b>";

/// Deterministic noise in [-1, 1) (no rand dependency; a test must not vary).
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }
}

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn jsonl(n: usize, mut line: impl FnMut(usize) -> String) -> String {
    (1..=n).fold(String::new(), |mut out, i| {
        let _ = writeln!(out, "{}", line(i));
        out
    })
}

/// A run directory shaped like `kiln pipeline`'s: every stage's
/// metrics.jsonl with plausible curves, summary.json and eval/results.json.
fn synthetic_run(dir: &Path) {
    let mut z = Noise(42);
    write(
        dir,
        "pretrain/metrics.jsonl",
        &jsonl(600, |i| {
            let t = i as f64;
            let lr = if i <= 50 {
                2e-3 * t / 50.0
            } else {
                2e-4 + 0.5 * 1.8e-3 * (1.0 + (std::f64::consts::PI * (t - 50.0) / 550.0).cos())
            };
            let loss = 3.2 + 5.1 * (-t / 60.0).exp() + 2.6 * (-t / 8.0).exp() + 0.08 * z.next();
            let gn = 0.6 + 4.0 * (-t / 40.0).exp() + 0.1 * z.next().abs();
            let tps = 15_000.0 + 900.0 * z.next();
            if i == 300 {
                // A skipped step: non-finite loss written as null.
                return format!("{{\"step\":{i},\"loss\":null,\"lr\":{lr},\"grad_norm\":null,\"tokens_per_s\":{tps},\"elapsed_s\":{},\"skipped\":true}}", t * 0.1);
            }
            format!("{{\"step\":{i},\"loss\":{loss},\"lr\":{lr},\"grad_norm\":{gn},\"tokens_per_s\":{tps},\"elapsed_s\":{}}}", t * 0.1)
        }),
    );
    write(
        dir,
        "sft/metrics.jsonl",
        &jsonl(200, |i| {
            let t = i as f64;
            let loss = 2.0 + 1.2 * (-t / 50.0).exp() + 0.05 * z.next();
            let val = if i % 25 == 0 {
                format!(",\"val_loss\":{}", 2.15 + 1.1 * (-t / 55.0).exp())
            } else {
                String::new()
            };
            format!(
                "{{\"step\":{i},\"loss\":{loss},\"lr\":1e-4,\"grad_norm\":{}{val}}}",
                1.0 + 0.2 * z.next()
            )
        }),
    );
    write(
        dir,
        "reward/metrics.jsonl",
        &jsonl(150, |i| {
            let t = i as f64;
            let acc = 0.5 + 0.3 * (1.0 - (-t / 40.0).exp()) + 0.05 * z.next();
            format!(
                "{{\"step\":{i},\"loss\":{},\"accuracy\":{acc},\"reward_margin\":{}}}",
                0.69 - 0.25 * (1.0 - (-t / 40.0).exp()) + 0.03 * z.next(),
                1.5 * (1.0 - (-t / 40.0).exp())
            )
        }),
    );
    write(
        dir,
        "dpo/metrics.jsonl",
        &jsonl(150, |i| {
            let t = i as f64;
            let m = 2.0 * (1.0 - (-t / 50.0).exp()) + 0.1 * z.next();
            format!(
                "{{\"step\":{i},\"loss\":{},\"rewards\":{{\"chosen\":{},\"rejected\":{}}},\"margin\":{m},\"accuracy\":{}}}",
                (1.0 + (-m).exp()).ln(),
                0.3 * m,
                -0.7 * m,
                (0.5 + 0.4 * (1.0 - (-t / 30.0).exp()) + 0.05 * z.next()).min(1.0)
            )
        }),
    );
    write(
        dir,
        "ppo/metrics.jsonl",
        &jsonl(100, |i| {
            let t = i as f64;
            format!(
                "{{\"step\":{i},\"reward\":{},\"kl\":{},\"entropy\":{},\"clip_frac\":{},\"value_loss\":{},\"policy_loss\":{},\"response_len\":{}}}",
                -0.2 + 0.9 * (1.0 - (-t / 30.0).exp()) + 0.1 * z.next(),
                0.02 * t.sqrt() + 0.01 * z.next().abs(),
                2.4 - 0.006 * t + 0.05 * z.next(),
                0.08 + 0.03 * z.next(),
                0.5 * (-t / 25.0).exp() + 0.05,
                0.02 * z.next(),
                (24.0 + 6.0 * z.next()).round()
            )
        }),
    );
    // The stage's own summary.json, as `kiln reward` writes it: the same
    // figures as summary.json's section, and long nested keys.
    write(
        dir,
        "reward/summary.json",
        r#"{"steps": 150, "eval": {"accuracy": 0.928, "loss": 0.31},
            "held_out_tasks": {"accuracy": 0.93, "by_flaw": {"wrong_list_category_with_a_deliberately_long_name": {"pairs": 40, "accuracy": 0.65}}},
            "pairs_per_s": 41.5}"#,
    );
    write(
        dir,
        "curated/stats.json",
        r#"{"input_docs": 1200, "input_bytes": 3100000, "kept_docs": 1043, "kept_bytes": 2800000,
            "filters": {"dedup": {"docs_removed": 61, "bytes_removed": 120000, "line_bytes_removed": 0},
                        "lang": {"docs_removed": 96, "bytes_removed": 180000, "line_bytes_removed": 0},
                        "line_filters": {"docs_removed": 0, "bytes_removed": 0, "line_bytes_removed": 4000}}}"#,
    );
    write(
        dir,
        "summary.json",
        r#"{
  "curate": {"input_docs": 1200, "input_bytes": 3100000, "kept_docs": 1043, "kept_bytes": 2800000, "removed_docs_by_filter": {"dedup": 61, "lang": 96}},
  "tokenizer": {"vocab_size": 4096},
  "tokenize": {"train_tokens": 2100000, "val_tokens": 43000},
  "pretrain": {"model": "mini", "parameters": 2610432, "steps": 600, "tokens_per_step": 4096, "final_train_loss": 3.21, "wall_s": 412.5},
  "eval": {"val_loss": 3.41, "val_ppl": 30.3, "unigram_entropy": 6.02},
  "reward": {"steps": 150, "eval": {"accuracy": 0.928, "loss": 0.31},
             "held_out_tasks": {"accuracy": 0.93, "by_flaw": {"wrong_list_category_with_a_deliberately_long_name": {"pairs": 40, "accuracy": 0.65}}}},
  "samples": [
    {"prompt": "In the beginning", "completion": " God created the heaven and the earth, and the light was good."},
    {"prompt": "The king said", "completion": " unto his servants, Go ye and <em>make</em> ready."}
  ],
  "wall_s": 701.3
}"#,
    );
    let prompts = [
        (
            "What is 17 + 25?",
            "arithmetic",
            ["17 25 17 25", "42.", "42", "The answer is 42."],
        ),
        (
            "Reply with exactly three words.",
            "format",
            [
                "Three words are three words",
                "Sure thing, friend.",
                "Happy to help",
                // One long unbroken word: it must wrap inside its cell.
                "Happy_to_help_and_then_some_more_text_without_any_space_at_all_to_break_the_line_xxxxxxxxxxxxxxxxxxxx",
            ],
        ),
        (
            "Is this review positive or negative? 'Loved every minute.'",
            "sentiment",
            ["the the the", "Positive.", "Positive", INJECTION],
        ),
        (
            "What is 9 * 8?",
            "arithmetic",
            ["9 8 9 8 9", "72", "72", "72."],
        ),
    ];
    let mut samples = Vec::new();
    for (prompt, task, answers) in prompts {
        let responses: Vec<String> = MODELS
            .iter()
            .zip(answers)
            .enumerate()
            .map(|(k, (m, a))| {
                let score = if k == 0 { 0.0 } else { 0.5 + 0.15 * k as f64 };
                format!(
                    "{}:{{\"text\":{},\"score\":{score}}}",
                    json_str(m),
                    json_str(a)
                )
            })
            .collect();
        samples.push(format!(
            "{{\"prompt\":{},\"task\":{},\"responses\":{{{}}}}}",
            json_str(prompt),
            json_str(task),
            responses.join(",")
        ));
    }
    // `kiln pipeline`'s shape: models by name, `judge`, `win_rate_vs_sft`,
    // `kl_to_sft`, `by_kind` as {kind: mean}.
    let models: Vec<String> = MODELS
        .iter()
        .enumerate()
        .map(|(k, m)| {
            let s = 0.1 + 0.2 * k as f64;
            format!(
                "{}:{{\"judge\":{s},\"win_rate_vs_sft\":{},\"kl_to_sft\":{},\"ended_rate\":0.9,\"mean_reply_tokens\":21.5,\"by_kind\":{{\"arithmetic\":{},\"format\":{},\"sentiment\":{}}}}}",
                json_str(m),
                [0.05, 0.5, 0.652, 0.623][k],
                [6.2, 0.0, 0.97, 1.46][k],
                s + 0.1,
                s - 0.05,
                s
            )
        })
        .collect();
    write(
        dir,
        "eval/results.json",
        &format!(
            "{{\"tasks\":300,\"models\":{{{}}},\"samples\":[{}]}}",
            models.join(","),
            samples.join(",")
        ),
    );
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn report_of(run: &Path) -> PathBuf {
    let out = kiln(&["report", s(run)]);
    assert!(
        out.status.success(),
        "kiln report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let path = PathBuf::from(printed.trim());
    assert_eq!(path, run.join("report.html"), "prints where it wrote");
    path
}

#[test]
fn report_of_a_full_run_renders_in_a_headless_browser() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    synthetic_run(&run);
    let report = report_of(&run);
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(!html.contains("<img"), "model output was not escaped");
    for stage in STAGES_WITH_METRICS {
        assert!(html.contains(&format!("id=\"stage-{stage}\"")), "{stage}");
    }

    let Some(browser) = find_chromium() else {
        eprintln!(
            "SKIPPED the browser check: no chromium, chromium-browser or google-chrome on PATH \
             (install Debian's `chromium` package to run it)"
        );
        return;
    };
    let url = format!("file://{}", report.display());
    let profile = dir.path().join("chromium-profile");

    // What a user opening the page sees first: a 1280x800 screen.
    let shot = dir.path().join("report.png");
    let out = run_browser(
        &browser,
        &profile,
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,800".into(),
            "--hide-scrollbars".into(),
            url.clone(),
        ],
    );
    assert!(
        out.status.success(),
        "{} --screenshot failed: {}",
        browser.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(shot.is_file(), "no screenshot written");
    if let Ok(keep) = std::env::var("KILN_REPORT_SCREENSHOT") {
        std::fs::copy(&shot, &keep).unwrap();
        eprintln!("screenshot kept at {keep}");
    }
    let image = decode_png(&shot);
    assert_eq!((image.width, image.height), (1280, 800));
    let (variance, colours) = pixel_stats(&image);
    assert!(
        variance > 200.0,
        "screenshot looks blank: luminance variance {variance:.1}"
    );
    assert!(colours > 50, "screenshot has only {colours} colours");
    // The judge chart's bars (the first models' colours) and the funnel's
    // kept bar are on the first screen.
    for c in [[0x4e, 0x79, 0xa7], [0xf2, 0x8e, 0x2b], [0x59, 0xa1, 0x4f]] {
        assert!(
            image.has_colour(c),
            "no pixel of colour {c:?} on the first screen"
        );
    }

    // Measured in the DOM, wide and narrow: no element sticks out of its
    // card (every <details> opened), and the judge chart is on the first
    // screen.
    for (width, height) in [(1280, 800), (760, 1000)] {
        let m = measure(&browser, &profile, &report, dir.path(), width, height);
        let overflow: Vec<String> = serde_json::from_value(m["overflow"].clone()).unwrap();
        assert!(
            overflow.is_empty(),
            "at {width}x{height}, elements overflow their cards:\n{}",
            overflow.join("\n")
        );
        assert!(
            m["checked"].as_u64().unwrap() > 500,
            "measured too few elements: {m}"
        );
        if width == 1280 {
            let bottom = m["judge"]["bottom"].as_f64().unwrap();
            let top = m["judge"]["top"].as_f64().unwrap();
            // The first screen is a 1280x800 viewport. Headless Chromium's
            // innerHeight for --window-size=1280,800 varies with the build
            // (661 px here: it subtracts window chrome), so the bound is the
            // viewport the page is designed for, not innerHeight.
            let screen = 800.0_f64;
            assert!(
                top >= 0.0 && bottom <= screen,
                "the judge chart ({top}..{bottom} px) is not on the first {screen} px"
            );
            // As are the verdict, the funnel and the pretraining card.
            for id in ["verdict", "funnel", "pretraining"] {
                let b = m["cards"][id].as_f64().unwrap();
                assert!(
                    b <= screen,
                    "#{id} ends at {b} px, below the first screen ({screen} px)"
                );
            }
        }
    }

    let out = run_browser(&browser, &profile, &["--dump-dom".into(), url]);
    assert!(
        out.status.success(),
        "{} --dump-dom failed: {}",
        browser.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    for id in ["results", "training", "samples", "figures"] {
        assert!(
            dom.contains(&format!("<section id=\"{id}\">")),
            "DOM lacks section {id}"
        );
    }
    // pretrain 4 + sft 3 (loss, lr, grad norm) + reward 3 + dpo 4 + ppo 7 line
    // charts, and the pretraining loss on the first screen; one judge chart.
    assert_eq!(dom.matches("<svg class=\"chart line-chart\"").count(), 22);
    assert_eq!(dom.matches("<svg class=\"chart panel-chart\"").count(), 1);
    // Judge score, win rate and KL for every model.
    assert_eq!(dom.matches("<rect class=\"bar\"").count(), 3 * MODELS.len());
    for v in [
        ">65.2%</text>",
        ">62.3%</text>",
        ">0.97</text>",
        ">0.7</text>",
    ] {
        assert!(dom.contains(v), "the judge chart lacks {v}");
    }
    // One series path per plotted metric.
    assert_eq!(
        dom.matches("<path class=\"series\"").count(),
        4 + 4 + 3 + 5 + 7 + 1
    );
    // Every table is folded; the full figures use readable labels.
    assert_eq!(dom.matches("<details class=\"card fold\"").count(), 2 + 7);
    assert!(dom.contains("Held out tasks › by flaw › wrong list category"));
    assert!(!dom.contains("<td>held_out_tasks."));
    // The injected markup is text in the DOM, not an element.
    assert!(
        !dom.contains("<img"),
        "the browser built an <img> from model output"
    );
    assert!(dom.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(dom.contains("What is 17 + 25?") && dom.contains("The answer is 42."));
}

/// Script measuring the page, injected into a copy of it (the report
/// itself has none): the judge chart's place, each first-screen card's
/// bottom, and every element wider than its box or sticking out of its
/// card, after opening every <details>.
const MEASURE_JS: &str = r#"
(function () {
  function desc(el) {
    var s = el.tagName.toLowerCase();
    if (el.id) s += '#' + el.id;
    var c = el.getAttribute('class');
    if (c) s += '.' + c.trim().split(/\s+/).join('.');
    return s;
  }
  var out = { w: innerWidth, h: innerHeight, cards: {}, overflow: [], checked: 0 };
  var j = document.getElementById('judge-chart').getBoundingClientRect();
  out.judge = { top: j.top, bottom: j.bottom };
  ['verdict', 'funnel', 'pretraining'].forEach(function (id) {
    out.cards[id] = document.getElementById(id).getBoundingClientRect().bottom;
  });
  document.querySelectorAll('details').forEach(function (d) { d.open = true; });
  document.querySelectorAll('.card, .chart-card').forEach(function (card) {
    var cr = card.getBoundingClientRect();
    if (card.scrollWidth > card.clientWidth + 1)
      out.overflow.push(desc(card) + ': scrollWidth ' + card.scrollWidth + ' > clientWidth ' + card.clientWidth);
    card.querySelectorAll('*').forEach(function (el) {
      out.checked++;
      // SVG shapes and text have no scroll box (Chromium reports text's
      // glyph extent there); the bounding-box check below covers them.
      if (!(el instanceof SVGElement) && el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1)
        out.overflow.push(desc(el) + ' in ' + desc(card) + ': scrollWidth ' + el.scrollWidth + ' > clientWidth ' + el.clientWidth);
      var r = el.getBoundingClientRect();
      if (r.width > 0 && (r.right > cr.right + 1 || r.left < cr.left - 1))
        out.overflow.push(desc(el) + ' sticks out of ' + desc(card) + ': ' + r.left + '..' + r.right + ' outside ' + cr.left + '..' + cr.right);
    });
  });
  out.overflow = out.overflow.slice(0, 30);
  var pre = document.createElement('pre');
  pre.id = 'measure';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
"#;

/// Opens a copy of `report` with [`MEASURE_JS`] at a `width` x `height`
/// window and returns what it measured.
fn measure(
    browser: &Path,
    profile: &Path,
    report: &Path,
    dir: &Path,
    width: u32,
    height: u32,
) -> serde_json::Value {
    let html = std::fs::read_to_string(report).unwrap();
    let page = html.replace("</body>", &format!("<script>{MEASURE_JS}</script></body>"));
    assert_ne!(page, html, "the report has no </body>");
    let copy = dir.join(format!("measure-{width}.html"));
    std::fs::write(&copy, page).unwrap();
    let out = run_browser(
        browser,
        profile,
        &[
            format!("--window-size={width},{height}"),
            "--hide-scrollbars".into(),
            "--dump-dom".into(),
            format!("file://{}", copy.display()),
        ],
    );
    assert!(
        out.status.success(),
        "{} --dump-dom failed: {}",
        browser.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    let start = dom
        .find("<pre id=\"measure\">")
        .unwrap_or_else(|| panic!("the measuring script wrote nothing (did it fail?)"))
        + "<pre id=\"measure\">".len();
    let end = start + dom[start..].find("</pre>").unwrap();
    let json = dom[start..end]
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    serde_json::from_str(&json).unwrap_or_else(|e| panic!("measurements {json}: {e}"))
}

#[test]
fn report_of_a_partial_run_and_of_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    write(
        &run,
        "pretrain/metrics.jsonl",
        "{\"step\":1,\"loss\":10.9,\"lr\":0.0001}\n{\"step\":2,\"loss\":10.1,\"lr\":0.0002}\n",
    );
    let report = report_of(&run);
    let html = std::fs::read_to_string(report).unwrap();
    assert!(html.contains("sft: not run (no sft/metrics.jsonl)"));
    assert!(html.contains("eval/results.json: not found"));

    // --out elsewhere.
    let other = dir.path().join("pages/r.html");
    let out = kiln(&["report", s(&run), "--out", s(&other)]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().trim(), s(&other));
    assert!(other.is_file());

    // A broken line: exit code 2, the message names file and line.
    write(
        &run,
        "sft/metrics.jsonl",
        "{\"step\":1,\"loss\":3.0}\n{\"step\":2,\"loss\":}\n",
    );
    let out = kiln(&["report", s(&run)]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sft/metrics.jsonl:2: not valid JSON"), "{err}");
}

fn find_chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    None
}

/// Runs headless Chromium with a throwaway profile, killed after a minute
/// (a hung browser must fail the test, not hang CI).
fn run_browser(browser: &Path, profile: &Path, args: &[String]) -> Output {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", browser.display()));
    // Drain the pipes on threads so a chatty browser cannot block on them.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut v).ok();
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut v).ok();
        v
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("{} did not finish within 60 s", browser.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

struct Image {
    width: u32,
    height: u32,
    /// RGB, 8 bits per channel.
    rgb: Vec<[u8; 3]>,
}

impl Image {
    fn has_colour(&self, c: [u8; 3]) -> bool {
        self.rgb.iter().any(|p| {
            p.iter()
                .zip(c)
                .all(|(&a, b)| (a as i32 - b as i32).abs() <= 6)
        })
    }
}

fn decode_png(path: &Path) -> Image {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(
        channels >= 3,
        "unexpected PNG colour type {:?}",
        info.color_type
    );
    let rgb = buf[..info.buffer_size()]
        .chunks_exact(channels)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    Image {
        width: info.width,
        height: info.height,
        rgb,
    }
}

/// Luminance variance and the number of distinct colours: a blank (white
/// or black) page has ~0 and 1.
fn pixel_stats(image: &Image) -> (f64, usize) {
    let lum: Vec<f64> = image
        .rgb
        .iter()
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect();
    let mean = lum.iter().sum::<f64>() / lum.len() as f64;
    let var = lum.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / lum.len() as f64;
    let mut colours: Vec<[u8; 3]> = image.rgb.clone();
    colours.sort_unstable();
    colours.dedup();
    (var, colours.len())
}
