//! Shared test helpers: a deterministic varied-text generator and the
//! tiktoken-rs rank files used as conformance data.
#![allow(dead_code)]

use std::path::PathBuf;

/// Small deterministic PRNG (xorshift64*).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E3779B97F4A7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len())]
    }
}

const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "that",
    "for",
    "it",
    "with",
    "as",
    "his",
    "on",
    "be",
    "at",
    "by",
    "I",
    "this",
    "had",
    "not",
    "are",
    "but",
    "from",
    "or",
    "have",
    "an",
    "they",
    "which",
    "one",
    "you",
    "were",
    "her",
    "all",
    "she",
    "there",
    "would",
    "their",
    "we",
    "him",
    "been",
    "has",
    "when",
    "who",
    "will",
    "more",
    "no",
    "if",
    "out",
    "tokenizer",
    "merges",
    "byte-level",
    "GPT",
    "HTTPServer",
    "McDonald",
    "iPhone",
    "naïve",
    "café",
    "résumé",
    "Zürich",
    "straße",
    "ſtrange",
    "ǅemal",
    "ʰaspirated",
    "don't",
    "WON'T",
    "it's",
    "IT'S",
    "they'll",
    "we've",
    "you're",
    "I'm",
    "he'd",
    "o'clock",
];

const MULTI: &[&str] = &[
    "Der schnelle braune Fuchs springt über den faulen Hund. Größe, Maß, Äpfel.",
    "Le cœur a ses raisons que la raison ne connaît point. « Déjà vu » — c'est ça.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю. Москва 2024 г.",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. Αθήνα, Ελλάδα.",
    "我能吞下玻璃而不伤身体。北京是中国的首都，人口约2100万。",
    "私はガラスを食べられます。それは私を傷つけません。東京タワー、カタカナ。",
    "나는 유리를 먹을 수 있어요. 그래도 아프지 않아요. 서울특별시",
    "أنا قادر على أكل الزجاج و هذا لا يؤلمني. العربية ١٢٣٤٥",
    "मैं काँच खा सकता हूँ और मुझे उससे कोई चोट नहीं पहुंचती। हिन्दी ०१२३",
    "ฉันกินกระจกได้ แต่มันไม่ทำให้ฉันเจ็บ ภาษาไทย",
    "אני יכול לאכול זכוכית וזה לא מזיק לי. עברית",
    "Tôi có thể ăn thủy tinh mà không hại gì. Tiếng Việt có dấu: ẫ ệ ữ",
    "e\u{301}te\u{301} cafe\u{301} n\u{303}o a\u{308}\u{301}",
    "Ｆｕｌｌｗｉｄｔｈ　ｔｅｘｔ　１２３",
];

const EMOJI: &[&str] = &[
    "😀",
    "👍🏽",
    "👨‍👩‍👧‍👦",
    "🇫🇷",
    "❤️",
    "🔥🔥🔥",
    "✅",
    "🤖",
    "1️⃣",
    "🏳️‍🌈",
];

const CODE: &[&str] = &[
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!(\"{x:?}\");\n}\n",
    "def f(a, b=2):\n\treturn {'k': a ** b, \"s\": f\"{a!r}\"}  # comment\n\n",
    "if (x != NULL && *p++ == '\\0') { return -1; }\r\n",
    "<div class=\"a\">&nbsp;<a href=\"https://ex.com/a/b?c=d&e=f\">link</a></div>\n",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;\n",
    "    for i in range(1_000_000):\n        total += i // 3 - 0x1F\n",
    "let re = r\"^\\s+(?!\\S)|[\\r\\n]+$\";  // ''' \"\"\" ``` ~~~\n",
    "{\"key\": [1, 2.5e-3, true, null], \"nested\": {\"a\": \"b\"}}\n",
];

const SPACES: &[&str] = &[
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n",
    "\n ",
    "  \n  ",
    "\u{a0}",
    "\u{3000}",
    "\t\t",
    "\n\n\n",
    " \r\n\r\n ",
    "\u{2003}",
    "\u{85}",
    "\u{b}\u{c}",
];

const DIGITS: &[&str] = &[
    "0",
    "7",
    "42",
    "123",
    "1234",
    "12345678901234567890",
    "3.14159",
    "1,234,567",
    "2024-06-01",
    "0x7fff",
    "1e-9",
    "½",
    "²³",
    "Ⅻ",
    "٣",
    "१२",
    "①②",
];

const PUNCT: &[&str] = &[
    ".", ",", "!", "?", "...", "—", "–", "\"", "'", "''", "(", ")", "[", "]", "{", "}", "/", "//",
    "\\", ":", ";", "@", "#", "$", "%", "^", "&", "*", "-", "_", "+", "=", "<", ">", "|", "~", "`",
    "'s", "'S", "'ll", "'LL", "'ſ", "'re", "'x", "/\n", "?!\r\n",
];

/// One random fragment of varied text.
pub fn fragment(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=3 => {
            let n = 3 + rng.below(20);
            let mut s = String::new();
            for i in 0..n {
                if i > 0 {
                    s.push_str(if rng.below(12) == 0 { "  " } else { " " });
                }
                let w = rng.pick(WORDS);
                if i == 0 || rng.below(8) == 0 {
                    let mut c = w.chars();
                    if let Some(f) = c.next() {
                        s.extend(f.to_uppercase());
                        s.push_str(c.as_str());
                    }
                } else {
                    s.push_str(w);
                }
                if rng.below(7) == 0 {
                    s.push_str(rng.pick(PUNCT));
                }
            }
            s.push_str(rng.pick(&[". ", ".\n", "! ", "?\n\n", ", ", "."]));
            s
        }
        4 => rng.pick(MULTI).to_string(),
        5 => rng.pick(CODE).to_string(),
        6 => rng.pick(SPACES).to_string(),
        7 => rng.pick(DIGITS).to_string(),
        8 => rng.pick(EMOJI).to_string(),
        _ => {
            let n = 1 + rng.below(4);
            (0..n).map(|_| rng.pick(PUNCT).to_string()).collect()
        }
    }
}

/// `n_docs` documents of roughly `doc_len` bytes each.
pub fn corpus(seed: u64, n_docs: usize, doc_len: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..n_docs)
        .map(|_| {
            let mut d = String::with_capacity(doc_len + 64);
            while d.len() < doc_len {
                d.push_str(&fragment(&mut rng));
            }
            d
        })
        .collect()
}

/// Real text found on the machine (licence texts, this crate's sources).
pub fn real_text() -> Vec<String> {
    let mut out = Vec::new();
    for p in [
        "/usr/share/common-licenses/GPL-3",
        "/usr/share/common-licenses/Apache-2.0",
    ] {
        if let Ok(s) = std::fs::read_to_string(p) {
            out.push(s);
        }
    }
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
    for e in std::fs::read_dir(src).into_iter().flatten().flatten() {
        if let Ok(s) = std::fs::read_to_string(e.path()) {
            out.push(s);
        }
    }
    out
}

/// The tiktoken-rs crate's asset directory (rank files, GPT-2 files).
pub fn tiktoken_assets() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .expect("CARGO_HOME or HOME");
    let src = home.join("registry").join("src");
    for reg in std::fs::read_dir(&src).into_iter().flatten().flatten() {
        let p = reg.path().join("tiktoken-rs-0.12.1").join("assets");
        if p.is_dir() {
            return p;
        }
    }
    panic!(
        "tiktoken-rs 0.12.1 assets not found under {}; run `cargo fetch`",
        src.display()
    );
}

pub fn load_encoding(name: &str) -> kiln_tokenizer::Tokenizer {
    let path = tiktoken_assets().join(format!("{name}.tiktoken"));
    kiln_tokenizer::formats::tiktoken::load(&path, Some(name)).expect("rank file loads")
}
