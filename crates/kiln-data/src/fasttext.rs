//! A reader and predictor for fastText supervised models (`.bin` / `.ftz`,
//! format version 12), written from fastText's own source: the model
//! FineWeb identifies languages with is one (lid.176), and this is how kiln
//! runs it without C++ or Python.
//!
//! Prediction is fastText's `predict` for one line: tokens split at ASCII
//! whitespace plus an end-of-line token `</s>`, each in-vocabulary word's
//! own row and its character n-grams (`<word>`, minn..=maxn characters,
//! FNV-1a hashed into `bucket` rows, mapped through the pruning table of a
//! quantised model), word n-grams if the model has them, the rows averaged,
//! then hierarchical softmax (or softmax) over the labels. Log-probabilities
//! add fastText's `log(x + 1e-5)` smoothing, so scores match its output.

use crate::fxhash::FxHashMap;

const MAGIC: i32 = 793_712_314;
const VERSION: i32 = 12;
const EOS: &str = "</s>";
const LABEL: &str = "__label__";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a fastText model (magic {0}, expected {MAGIC})")]
    Magic(i32),
    #[error("fastText model format version {0}, only {VERSION} is read")]
    Version(i32),
    #[error("fastText model is truncated (at byte {0})")]
    Truncated(usize),
    #[error("fastText model: {0}")]
    Unsupported(String),
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or(Error::Truncated(self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn i32(&mut self) -> Result<i32, Error> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn i64(&mut self) -> Result<i64, Error> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn f64(&mut self) -> Result<f64, Error> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }
    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, Error> {
        let raw = self.take(n.checked_mul(4).ok_or(Error::Truncated(self.pos))?)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }
    fn cstr(&mut self) -> Result<String, Error> {
        let rest = &self.b[self.pos..];
        let n = rest
            .iter()
            .position(|&c| c == 0)
            .ok_or(Error::Truncated(self.pos))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
}

/// fastText's product quantiser: 256 centroids per sub-vector.
struct Pq {
    nsubq: usize,
    dsub: usize,
    lastdsub: usize,
    centroids: Vec<f32>,
}

impl Pq {
    fn load(r: &mut Reader) -> Result<Pq, Error> {
        let dim = r.i32()? as usize;
        let nsubq = r.i32()? as usize;
        let dsub = r.i32()? as usize;
        let lastdsub = r.i32()? as usize;
        let centroids = r.f32s(dim * 256)?;
        Ok(Pq {
            nsubq,
            dsub,
            lastdsub,
            centroids,
        })
    }

    fn centroid(&self, m: usize, code: u8) -> &[f32] {
        let i = code as usize;
        if m == self.nsubq - 1 {
            let s = m * 256 * self.dsub + i * self.lastdsub;
            &self.centroids[s..s + self.lastdsub]
        } else {
            let s = (m * 256 + i) * self.dsub;
            &self.centroids[s..s + self.dsub]
        }
    }
}

enum Matrix {
    Dense {
        n: usize,
        data: Vec<f32>,
    },
    Quant {
        codes: Vec<u8>,
        pq: Pq,
        norms: Option<(Vec<u8>, Pq)>,
    },
}

impl Matrix {
    fn load_dense(r: &mut Reader) -> Result<Matrix, Error> {
        let m = r.i64()? as usize;
        let n = r.i64()? as usize;
        let data = r.f32s(m * n)?;
        Ok(Matrix::Dense { n, data })
    }

    fn load_quant(r: &mut Reader) -> Result<Matrix, Error> {
        let qnorm = r.u8()? != 0;
        let m = r.i64()? as usize;
        let _n = r.i64()?;
        let codesize = r.i32()? as usize;
        let codes = r.take(codesize)?.to_vec();
        let pq = Pq::load(r)?;
        let norms = if qnorm {
            let c = r.take(m)?.to_vec();
            Some((c, Pq::load(r)?))
        } else {
            None
        };
        Ok(Matrix::Quant { codes, pq, norms })
    }

    fn norm(&self, row: usize) -> f32 {
        match self {
            Matrix::Quant {
                norms: Some((c, npq)),
                ..
            } => npq.centroid(0, c[row])[0],
            _ => 1.0,
        }
    }

    fn add_row(&self, x: &mut [f32], row: usize) {
        match self {
            Matrix::Dense { n, data } => {
                for (a, b) in x.iter_mut().zip(&data[row * n..(row + 1) * n]) {
                    *a += b;
                }
            }
            Matrix::Quant { codes, pq, .. } => {
                let alpha = self.norm(row);
                let code = &codes[pq.nsubq * row..pq.nsubq * (row + 1)];
                for (m, &c) in code.iter().enumerate() {
                    for (j, v) in pq.centroid(m, c).iter().enumerate() {
                        x[m * pq.dsub + j] += alpha * v;
                    }
                }
            }
        }
    }

    fn dot_row(&self, x: &[f32], row: usize) -> f32 {
        match self {
            Matrix::Dense { n, data } => x
                .iter()
                .zip(&data[row * n..(row + 1) * n])
                .map(|(a, b)| a * b)
                .sum(),
            Matrix::Quant { codes, pq, .. } => {
                let code = &codes[pq.nsubq * row..pq.nsubq * (row + 1)];
                let mut res = 0.0f32;
                for (m, &c) in code.iter().enumerate() {
                    for (j, v) in pq.centroid(m, c).iter().enumerate() {
                        res += x[m * pq.dsub + j] * v;
                    }
                }
                res * self.norm(row)
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Node {
    left: i32,
    right: i32,
}

/// A loaded supervised fastText model.
pub struct FastText {
    dim: usize,
    minn: usize,
    maxn: usize,
    bucket: u32,
    word_ngrams: usize,
    nwords: usize,
    labels: Vec<String>,
    words: Vec<String>,
    word2int: Vec<i32>,
    /// `None`: not pruned; `Some(map)`: bucket id -> row (quantised models).
    prune: Option<FxHashMap<i32, i32>>,
    input: Matrix,
    output: Matrix,
    /// Hierarchical softmax tree (loss hs), else plain softmax.
    tree: Option<Vec<Node>>,
}

fn fnv(s: &[u8]) -> u32 {
    let mut h: u32 = 2_166_136_261;
    for &b in s {
        h ^= b as i8 as i32 as u32;
        h = h.wrapping_mul(16_777_619);
    }
    h
}

/// fastText's `log(x + 1e-5)`.
fn slog(x: f32) -> f32 {
    (x + 1e-5).ln()
}

impl FastText {
    pub fn from_bytes(b: &[u8]) -> Result<FastText, Error> {
        let mut r = Reader { b, pos: 0 };
        let magic = r.i32()?;
        if magic != MAGIC {
            return Err(Error::Magic(magic));
        }
        let version = r.i32()?;
        if version != VERSION {
            return Err(Error::Version(version));
        }
        let dim = r.i32()? as usize;
        let _ws = r.i32()?;
        let _epoch = r.i32()?;
        let _min_count = r.i32()?;
        let _neg = r.i32()?;
        let word_ngrams = r.i32()? as usize;
        let loss = r.i32()?;
        let model = r.i32()?;
        let bucket = r.i32()? as u32;
        let minn = r.i32()? as usize;
        let maxn = r.i32()? as usize;
        let _lr_update = r.i32()?;
        let _t = r.f64()?;
        if model != 3 {
            return Err(Error::Unsupported(format!(
                "model type {model} is not supervised"
            )));
        }
        // Dictionary.
        let size = r.i32()? as usize;
        let nwords = r.i32()? as usize;
        let nlabels = r.i32()? as usize;
        let _ntokens = r.i64()?;
        let prune_size = r.i64()?;
        let mut entries = Vec::with_capacity(size);
        let mut counts = Vec::with_capacity(size);
        for _ in 0..size {
            let w = r.cstr()?;
            counts.push(r.i64()?);
            let _type = r.u8()?;
            entries.push(w);
        }
        let prune = if prune_size >= 0 {
            let mut m = FxHashMap::default();
            m.reserve(prune_size as usize);
            for _ in 0..prune_size {
                let a = r.i32()?;
                let b = r.i32()?;
                m.insert(a, b);
            }
            Some(m)
        } else {
            None
        };
        let quant_input = r.u8()? != 0;
        let input = if quant_input {
            Matrix::load_quant(&mut r)?
        } else {
            Matrix::load_dense(&mut r)?
        };
        let qout = r.u8()? != 0;
        let output = if quant_input && qout {
            Matrix::load_quant(&mut r)?
        } else {
            Matrix::load_dense(&mut r)?
        };
        let labels: Vec<String> = entries[nwords..]
            .iter()
            .map(|l| l.strip_prefix(LABEL).unwrap_or(l).to_string())
            .collect();
        let tree = match loss {
            1 => Some(huffman(&counts[nwords..])),
            3 => None,
            _ => {
                return Err(Error::Unsupported(format!(
                    "loss {loss} (only hs and softmax predict)"
                )))
            }
        };
        let words: Vec<String> = entries[..nwords + nlabels].to_vec();
        let cap = (words.len() as f64 / 0.7).ceil() as usize;
        let mut ft = FastText {
            dim,
            minn,
            maxn,
            bucket,
            word_ngrams,
            nwords,
            labels,
            words,
            word2int: vec![-1; cap],
            prune,
            input,
            output,
            tree,
        };
        for i in 0..ft.words.len() {
            let slot = ft.find(ft.words[i].as_bytes());
            ft.word2int[slot] = i as i32;
        }
        Ok(ft)
    }

    /// The labels, without fastText's `__label__` prefix.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    fn find(&self, w: &[u8]) -> usize {
        let n = self.word2int.len();
        let mut id = fnv(w) as usize % n;
        while self.word2int[id] != -1 && self.words[self.word2int[id] as usize].as_bytes() != w {
            id = (id + 1) % n;
        }
        id
    }

    fn push_hash(&self, out: &mut Vec<usize>, id: i64) {
        if id < 0 {
            return;
        }
        let id = match &self.prune {
            Some(m) if m.is_empty() => return,
            Some(m) => match m.get(&(id as i32)) {
                Some(&j) => j as usize,
                None => return,
            },
            None => id as usize,
        };
        out.push(self.nwords + id);
    }

    fn subwords(&self, word: &str, buf: &mut Vec<u8>, out: &mut Vec<usize>) {
        buf.clear();
        buf.push(b'<');
        buf.extend_from_slice(word.as_bytes());
        buf.push(b'>');
        let b = &buf[..];
        for i in 0..b.len() {
            if b[i] & 0xC0 == 0x80 {
                continue;
            }
            let (mut j, mut n) = (i, 1);
            while j < b.len() && n <= self.maxn {
                j += 1;
                while j < b.len() && b[j] & 0xC0 == 0x80 {
                    j += 1;
                }
                if n >= self.minn && !(n == 1 && (i == 0 || j == b.len())) {
                    let h = fnv(&b[i..j]) % self.bucket;
                    self.push_hash(out, h as i64);
                }
                n += 1;
            }
        }
    }

    /// The input rows of one line of text (fastText's `getLine`).
    fn line(&self, text: &str) -> Vec<usize> {
        let mut rows = Vec::new();
        let mut hashes: Vec<i32> = Vec::new();
        let mut buf = Vec::new();
        let is_sep = |c: char| matches!(c, ' ' | '\n' | '\r' | '\t' | '\x0b' | '\x0c' | '\0');
        let tokens = text.split(is_sep).filter(|t| !t.is_empty()).chain([EOS]);
        for tok in tokens {
            let slot = self.find(tok.as_bytes());
            let wid = self.word2int[slot];
            let is_label = if wid < 0 {
                tok.starts_with(LABEL)
            } else {
                wid as usize >= self.nwords
            };
            if is_label {
                continue;
            }
            if wid < 0 {
                if tok != EOS {
                    self.subwords(tok, &mut buf, &mut rows);
                }
            } else {
                rows.push(wid as usize);
                if self.maxn > 0 && tok != EOS {
                    self.subwords(tok, &mut buf, &mut rows);
                }
            }
            hashes.push(fnv(tok.as_bytes()) as i32);
        }
        for i in 0..hashes.len() {
            let mut h = hashes[i] as i64 as u64;
            for &hj in hashes
                .iter()
                .take((i + self.word_ngrams).min(hashes.len()))
                .skip(i + 1)
            {
                h = h.wrapping_mul(116_049_371).wrapping_add(hj as i64 as u64);
                self.push_hash(&mut rows, (h % self.bucket as u64) as i32 as i64);
            }
        }
        rows
    }

    /// Every label's probability for one line (newlines count as spaces),
    /// most likely first. Empty when no input row is known.
    pub fn predict(&self, text: &str) -> Vec<(&str, f32)> {
        let rows = self.line(text);
        if rows.is_empty() {
            return Vec::new();
        }
        let mut hidden = vec![0f32; self.dim];
        for &r in &rows {
            self.input.add_row(&mut hidden, r);
        }
        let inv = 1.0 / rows.len() as f32;
        hidden.iter_mut().for_each(|h| *h *= inv);
        let nl = self.labels.len();
        let mut logp = vec![0f32; nl];
        match &self.tree {
            Some(tree) => self.dfs(tree, 2 * nl - 2, 0.0, &hidden, &mut logp),
            None => {
                let out: Vec<f32> = (0..nl).map(|i| self.output.dot_row(&hidden, i)).collect();
                let max = out.iter().cloned().fold(f32::MIN, f32::max);
                let e: Vec<f32> = out.iter().map(|o| (o - max).exp()).collect();
                let z: f32 = e.iter().sum();
                for (l, v) in logp.iter_mut().zip(e) {
                    *l = slog(v / z);
                }
            }
        }
        let mut out: Vec<(&str, f32)> = self
            .labels
            .iter()
            .zip(logp)
            .map(|(l, s)| (l.as_str(), s.exp()))
            .collect();
        out.sort_by(|a, b| b.1.total_cmp(&a.1));
        out
    }

    fn dfs(&self, tree: &[Node], node: usize, score: f32, hidden: &[f32], out: &mut [f32]) {
        let n = tree[node];
        if n.left < 0 {
            out[node] = score;
            return;
        }
        let nl = self.labels.len();
        let f = 1.0 / (1.0 + (-self.output.dot_row(hidden, node - nl)).exp());
        self.dfs(tree, n.left as usize, score + slog(1.0 - f), hidden, out);
        self.dfs(tree, n.right as usize, score + slog(f), hidden, out);
    }
}

/// fastText's Huffman tree over label counts (`buildTree`): leaves first
/// (counts in decreasing order), internal nodes after; the root is last.
fn huffman(counts: &[i64]) -> Vec<Node> {
    let n = counts.len();
    let mut count: Vec<i64> = vec![1_000_000_000_000_000; 2 * n - 1];
    count[..n].copy_from_slice(counts);
    let mut tree = vec![
        Node {
            left: -1,
            right: -1
        };
        2 * n - 1
    ];
    let mut leaf = n as i64 - 1;
    let mut node = n;
    for i in n..2 * n - 1 {
        let mut mini = [0usize; 2];
        for m in &mut mini {
            if leaf >= 0 && count[leaf as usize] < count[node] {
                *m = leaf as usize;
                leaf -= 1;
            } else {
                *m = node;
                node += 1;
            }
        }
        tree[i] = Node {
            left: mini[0] as i32,
            right: mini[1] as i32,
        };
        count[i] = count[mini[0]] + count[mini[1]];
    }
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_fasttext_sign_extension() {
        // fastText hashes bytes as int8: a byte >= 0x80 is sign-extended.
        assert_eq!(fnv(b""), 2_166_136_261);
        assert_eq!(fnv(b"a"), 0xe40c292c);
        assert_ne!(fnv("é".as_bytes()), {
            let mut h: u32 = 2_166_136_261;
            for &b in "é".as_bytes() {
                h ^= b as u32;
                h = h.wrapping_mul(16_777_619);
            }
            h
        });
    }

    #[test]
    fn huffman_tree_joins_the_two_rarest() {
        // counts 5, 3, 1 (sorted as fastText sorts them): 1+3 first, then 5.
        let t = huffman(&[5, 3, 1]);
        assert_eq!((t[3].left, t[3].right), (2, 1));
        assert_eq!((t[4].left, t[4].right), (3, 0));
    }

    #[test]
    fn rejects_what_is_not_a_model() {
        assert!(matches!(
            FastText::from_bytes(b"no"),
            Err(Error::Truncated(0))
        ));
        let mut b = MAGIC.to_le_bytes().to_vec();
        b.extend(11i32.to_le_bytes());
        assert!(matches!(FastText::from_bytes(&b), Err(Error::Version(11))));
        assert!(matches!(
            FastText::from_bytes(&[1, 0, 0, 0, 0, 0, 0, 0]),
            Err(Error::Magic(1))
        ));
    }
}
