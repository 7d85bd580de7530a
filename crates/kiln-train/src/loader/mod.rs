//! The training data loader: `(tokens, targets)` batches of `B x T` from llm.c
//! token shards, in a deterministic shuffled order, sharded by rank, with an
//! exact position that a checkpoint stores so a resumed run reads the very
//! next batch.
//!
//! Order: the windows of all shards (see [`TokenSource`]) form one sequence of
//! `W` windows. Epoch `e` visits them in a permutation drawn from
//! `(seed, e)`; the permuted epochs are laid end to end and cut into batches
//! of `B` windows (a batch may straddle two epochs). Global batch `g` goes to
//! rank `g % world`. So the position is one number: the batches this rank has
//! taken, and any batch can be computed without replaying the earlier ones.

mod source;

use std::path::{Path, PathBuf};

pub use source::{is_val_name, shards_of, Split, TokenSource};

/// Bad or unreadable token data; names the file.
#[derive(Debug, Clone)]
pub struct DataError {
    pub path: PathBuf,
    pub problem: String,
}

impl DataError {
    pub fn new(path: &Path, problem: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            problem: problem.into(),
        }
    }
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "token data {}: {}", self.path.display(), self.problem)
    }
}

impl std::error::Error for DataError {}

/// How the loader cuts and orders the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub seq_len: usize,
    pub seed: u64,
    /// Permute windows every epoch (training); `false` keeps file order.
    pub shuffle: bool,
    pub rank: usize,
    pub world: usize,
}

/// Where a loader stands, as stored in a checkpoint. The fields besides
/// `batches_taken` let a resume check it reads the same data the same way.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoaderPosition {
    /// Batches this rank has returned so far.
    pub batches_taken: u64,
    pub batch_size: usize,
    pub seq_len: usize,
    pub seed: u64,
    pub shuffle: bool,
    pub rank: usize,
    pub world: usize,
    /// Windows in the data; a different count means different data.
    pub total_windows: u64,
    /// The shards' names, sizes and content hashes
    /// ([`TokenSource::fingerprint`]): other data of the same length is
    /// still other data. Empty in checkpoints of older kiln versions
    /// (not checked then).
    #[serde(default)]
    pub data_fingerprint: String,
}

/// One batch: `tokens[b*T + t]` predicts `targets[b*T + t]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub tokens: Vec<u32>,
    pub targets: Vec<u32>,
}

pub struct DataLoader {
    source: TokenSource,
    fingerprint: String,
    opts: LoaderOptions,
    batches_taken: u64,
    /// The permutation of the epoch read last (recomputed when it changes).
    epoch_perm: Option<(u64, Vec<u32>)>,
    window: Vec<u32>,
}

impl DataLoader {
    pub fn open(path: &Path, opts: LoaderOptions) -> Result<Self, DataError> {
        if opts.batch_size == 0 || opts.world == 0 || opts.rank >= opts.world {
            return Err(DataError::new(
                path,
                format!(
                    "invalid loader options: batch_size {} (must be >= 1), rank {} of world {}",
                    opts.batch_size, opts.rank, opts.world
                ),
            ));
        }
        let source = TokenSource::open(path, opts.seq_len)?;
        if source.num_windows() > u32::MAX as u64 {
            return Err(DataError::new(
                path,
                format!(
                    "{} windows exceed the loader's limit of 2^32; use a longer --seq-len",
                    source.num_windows()
                ),
            ));
        }
        let fingerprint = source.fingerprint()?;
        Ok(Self {
            window: vec![0; opts.seq_len + 1],
            fingerprint,
            source,
            opts,
            batches_taken: 0,
            epoch_perm: None,
        })
    }

    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    pub fn options(&self) -> LoaderOptions {
        self.opts
    }

    pub fn position(&self) -> LoaderPosition {
        LoaderPosition {
            batches_taken: self.batches_taken,
            batch_size: self.opts.batch_size,
            seq_len: self.opts.seq_len,
            seed: self.opts.seed,
            shuffle: self.opts.shuffle,
            rank: self.opts.rank,
            world: self.opts.world,
            total_windows: self.source.num_windows(),
            data_fingerprint: self.fingerprint.clone(),
        }
    }

    /// Continues from `pos`; refuses a position taken with other data or
    /// other options (the batches would silently differ).
    pub fn seek(&mut self, pos: &LoaderPosition) -> Result<(), DataError> {
        let mut mine = LoaderPosition {
            batches_taken: pos.batches_taken,
            ..self.position()
        };
        if pos.data_fingerprint.is_empty() {
            mine.data_fingerprint.clear();
        }
        if &mine != pos {
            let path = self
                .source
                .paths()
                .next()
                .expect("a source has shards")
                .to_path_buf();
            return Err(DataError::new(
                &path,
                format!(
                    "the checkpoint was taken {}; resume with the same data and settings, \
                     or start a new run with another --out",
                    position_differences(pos, &mine)
                ),
            ));
        }
        self.batches_taken = pos.batches_taken;
        Ok(())
    }

    /// The next batch for this rank.
    pub fn next_batch(&mut self) -> Result<Batch, DataError> {
        let (b, t) = (self.opts.batch_size, self.opts.seq_len);
        let global = self.batches_taken * self.opts.world as u64 + self.opts.rank as u64;
        let mut batch = Batch {
            tokens: Vec::with_capacity(b * t),
            targets: Vec::with_capacity(b * t),
        };
        for j in 0..b as u64 {
            let index = self.window_index(global * b as u64 + j);
            let mut window = std::mem::take(&mut self.window);
            let r = self.source.read_window(index, &mut window);
            self.window = window;
            r?;
            batch.tokens.extend_from_slice(&self.window[..t]);
            batch.targets.extend_from_slice(&self.window[1..]);
        }
        self.batches_taken += 1;
        Ok(batch)
    }

    /// Which window the `flat`-th slot of the epoch-after-epoch sequence holds.
    fn window_index(&mut self, flat: u64) -> u64 {
        let w = self.source.num_windows();
        let (epoch, within) = (flat / w, flat % w);
        if !self.opts.shuffle {
            return within;
        }
        if self.epoch_perm.as_ref().map(|(e, _)| *e) != Some(epoch) {
            self.epoch_perm = Some((epoch, permutation(w as u32, self.opts.seed, epoch)));
        }
        self.epoch_perm.as_ref().expect("just set").1[within as usize] as u64
    }
}

/// What differs between a saved and a current position, as a phrase.
fn position_differences(saved: &LoaderPosition, now: &LoaderPosition) -> String {
    let mut parts = Vec::new();
    if saved.data_fingerprint != now.data_fingerprint || saved.total_windows != now.total_windows {
        parts.push(if saved.total_windows != now.total_windows {
            format!(
                "on other data ({} windows then, {} now)",
                saved.total_windows, now.total_windows
            )
        } else {
            "on other data of the same length (the shards' contents changed since)".to_string()
        });
    }
    let mut field = |name: &str, a: String, b: String| {
        if a != b {
            parts.push(format!("with {name} {a} (now {b})"));
        }
    };
    field(
        "batch size",
        saved.batch_size.to_string(),
        now.batch_size.to_string(),
    );
    field(
        "sequence length",
        saved.seq_len.to_string(),
        now.seq_len.to_string(),
    );
    field("seed", saved.seed.to_string(), now.seed.to_string());
    field(
        "shuffle",
        saved.shuffle.to_string(),
        now.shuffle.to_string(),
    );
    field("rank", saved.rank.to_string(), now.rank.to_string());
    field("world size", saved.world.to_string(), now.world.to_string());
    parts.join(", ")
}

/// A uniformly shuffled `0..n` (Fisher-Yates) determined by `(seed, epoch)`.
pub fn permutation(n: u32, seed: u64, epoch: u64) -> Vec<u32> {
    let mut rng = SplitMix64(seed ^ epoch.wrapping_mul(0xA076_1D64_78BD_642F));
    let mut v: Vec<u32> = (0..n).collect();
    for i in (1..v.len()).rev() {
        // Multiply-shift maps a u64 onto 0..=i; the bias is below 2^-32.
        let j = ((rng.next() as u128 * (i as u128 + 1)) >> 64) as usize;
        v.swap(i, j);
    }
    v
}

/// SplitMix64: tiny, fast, and fixed forever, so shuffles never change
/// between kiln versions (a resumed run must see the same order).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests;
