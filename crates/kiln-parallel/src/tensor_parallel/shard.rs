//! Which parameter splits how, and the moves between the full model and
//! per-rank shards.
//!
//! kiln stores linear weights `[out, in]` (PyTorch `nn.Linear`; HF's GPT-2
//! checkpoints hold them transposed, Conv1D `[in, out]`). So Megatron's
//! column-parallel layers (c_attn, c_fc: split the outputs) split kiln's
//! *rows*, and its row-parallel layers (the two c_proj: split the inputs)
//! split kiln's *columns*. c_attn is `[3C, C]` with q, k, v as three row
//! blocks of `C`, heads `hd` rows each; rank r needs heads
//! `r*nh/tp..(r+1)*nh/tp` of all three, so its shard is its rows of q, then
//! of k, then of v: a local `[q | k | v]` of `3C/tp` rows, the layout the
//! attention op expects for `nh/tp` heads.

use kiln_model::GptConfig;

use super::{check_layout, TpError};

/// How one parameter is divided over the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// Every rank holds all of it: LayerNorms, `wpe`, row-parallel biases.
    Replicated,
    /// Contiguous blocks of rows (of a `[rows, cols]` tensor; a vector is
    /// `[len, 1]`): `wte`'s vocabulary rows, c_fc's weight and bias.
    Rows,
    /// Contiguous blocks of columns of every row: the c_proj weights.
    Cols,
    /// c_attn's weight or bias: rank r's rows of each of the q, k and v
    /// blocks, concatenated.
    Qkv,
}

/// One parameter of the full model: its name, full shape and split.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamLayout {
    /// Hugging Face GPT-2 name (as [`kiln_model::Param::name`]).
    pub name: String,
    /// The full kiln shape (as [`kiln_model::Param::shape`]).
    pub shape: Vec<usize>,
    pub split: Split,
}

impl ParamLayout {
    /// `[rows, cols]` of the full tensor (a vector has one column).
    fn rows_cols(&self) -> (usize, usize) {
        (self.shape[0], self.shape.get(1).copied().unwrap_or(1))
    }

    /// The shape one of `tp` ranks holds.
    pub fn local_shape(&self, tp: usize) -> Vec<usize> {
        let mut s = self.shape.clone();
        match self.split {
            Split::Replicated => {}
            Split::Rows | Split::Qkv => s[0] /= tp,
            Split::Cols => s[1] /= tp,
        }
        s
    }

    pub fn full_len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Rank `rank`'s shard of `full` (kiln layout).
    pub fn shard(&self, full: &[f32], tp: usize, rank: usize) -> Vec<f32> {
        let (rows, cols) = self.rows_cols();
        match self.split {
            Split::Replicated => full.to_vec(),
            Split::Rows => {
                let n = rows / tp * cols;
                full[rank * n..(rank + 1) * n].to_vec()
            }
            Split::Cols => {
                let w = cols / tp;
                full.chunks_exact(cols)
                    .flat_map(|row| &row[rank * w..(rank + 1) * w])
                    .copied()
                    .collect()
            }
            Split::Qkv => {
                // Three blocks of c = rows/3 rows (q, k, v); this rank's c/tp of each.
                let (c, n) = (rows / 3, rows / 3 / tp);
                (0..3)
                    .flat_map(|blk| {
                        let r0 = blk * c + rank * n;
                        &full[r0 * cols..(r0 + n) * cols]
                    })
                    .copied()
                    .collect()
            }
        }
    }

    /// The full tensor from every rank's shard (inverse of `shard`); a
    /// replicated parameter is taken from rank 0.
    fn gather(&self, shards: &[&[f32]]) -> Vec<f32> {
        let tp = shards.len();
        let (rows, cols) = self.rows_cols();
        match self.split {
            Split::Replicated => shards[0].to_vec(),
            Split::Rows => shards.concat(),
            Split::Cols => {
                let w = cols / tp;
                let mut full = Vec::with_capacity(rows * cols);
                for row in 0..rows {
                    for s in shards {
                        full.extend_from_slice(&s[row * w..(row + 1) * w]);
                    }
                }
                full
            }
            Split::Qkv => {
                let n = rows / 3 / tp;
                let mut full = Vec::with_capacity(rows * cols);
                for blk in 0..3 {
                    for s in shards {
                        full.extend_from_slice(&s[blk * n * cols..(blk + 1) * n * cols]);
                    }
                }
                full
            }
        }
    }
}

/// Per block, in HF `named_parameters` order (kiln-model's `params.rs`).
const PER_LAYER: usize = 12;

/// Index of block `layer`'s first parameter (wte and wpe come first).
pub(crate) fn layer_start(layer: usize) -> usize {
    2 + layer * PER_LAYER
}

/// Every parameter of a GPT-2 `cfg`, in [`kiln_model::Gpt::params`] order,
/// with its split. (Mirrors kiln-model's parameter list; a test checks the
/// two agree.)
pub fn param_layouts(cfg: &GptConfig) -> Vec<ParamLayout> {
    let c = cfg.n_embd;
    let p = |name: String, shape: Vec<usize>, split| ParamLayout { name, shape, split };
    let mut out = vec![
        p(
            "transformer.wte.weight".into(),
            vec![cfg.padded_vocab_size, c],
            Split::Rows,
        ),
        p(
            "transformer.wpe.weight".into(),
            vec![cfg.max_seq_len, c],
            Split::Replicated,
        ),
    ];
    for l in 0..cfg.n_layer {
        let n = |s: &str| format!("transformer.h.{l}.{s}");
        out.extend([
            p(n("ln_1.weight"), vec![c], Split::Replicated),
            p(n("ln_1.bias"), vec![c], Split::Replicated),
            p(n("attn.c_attn.weight"), vec![3 * c, c], Split::Qkv),
            p(n("attn.c_attn.bias"), vec![3 * c], Split::Qkv),
            p(n("attn.c_proj.weight"), vec![c, c], Split::Cols),
            // Row-parallel bias: added once, after the all-reduce.
            p(n("attn.c_proj.bias"), vec![c], Split::Replicated),
            p(n("ln_2.weight"), vec![c], Split::Replicated),
            p(n("ln_2.bias"), vec![c], Split::Replicated),
            p(n("mlp.c_fc.weight"), vec![4 * c, c], Split::Rows),
            p(n("mlp.c_fc.bias"), vec![4 * c], Split::Rows),
            p(n("mlp.c_proj.weight"), vec![c, 4 * c], Split::Cols),
            p(n("mlp.c_proj.bias"), vec![c], Split::Replicated),
        ]);
    }
    out.push(p(
        "transformer.ln_f.weight".into(),
        vec![c],
        Split::Replicated,
    ));
    out.push(p(
        "transformer.ln_f.bias".into(),
        vec![c],
        Split::Replicated,
    ));
    out
}

/// Splits the full parameters (kiln layout, [`kiln_model::Gpt::params`]
/// order, e.g. from [`kiln_model::Gpt::read_params`]) into `tp` shards:
/// `result[rank][param]`.
pub fn shard_params(
    cfg: &GptConfig,
    tp: usize,
    full: &[Vec<f32>],
) -> Result<Vec<Vec<Vec<f32>>>, TpError> {
    check_layout(cfg, tp)?;
    let layouts = param_layouts(cfg);
    check_lens(&layouts, full, |l| l.full_len(), "full model")?;
    Ok((0..tp)
        .map(|rank| {
            layouts
                .iter()
                .zip(full)
                .map(|(l, v)| l.shard(v, tp, rank))
                .collect()
        })
        .collect())
}

/// The full parameters (kiln layout) from every rank's shards
/// (`shards[rank][param]`, e.g. each [`super::TpGpt::read_params`] or
/// `read_grads`); the inverse of [`shard_params`]. Replicated tensors are
/// taken from rank 0.
pub fn gather_params(cfg: &GptConfig, shards: &[Vec<Vec<f32>>]) -> Result<Vec<Vec<f32>>, TpError> {
    let tp = shards.len();
    check_layout(cfg, tp)?;
    let layouts = param_layouts(cfg);
    for (rank, s) in shards.iter().enumerate() {
        check_lens(
            &layouts,
            s,
            |l| l.local_shape(tp).iter().product(),
            &format!("rank {rank}'s shard"),
        )?;
    }
    Ok(layouts
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let parts: Vec<&[f32]> = shards.iter().map(|s| s[i].as_slice()).collect();
            l.gather(&parts)
        })
        .collect())
}

/// Every tensor of `values` has the length `want` gives its layout.
pub(crate) fn check_lens(
    layouts: &[ParamLayout],
    values: &[Vec<f32>],
    want: impl Fn(&ParamLayout) -> usize,
    what: &str,
) -> Result<(), TpError> {
    if layouts.len() != values.len() {
        return Err(TpError::Input(format!(
            "{what}: expected {} parameter tensors, got {}",
            layouts.len(),
            values.len()
        )));
    }
    for (l, v) in layouts.iter().zip(values) {
        if v.len() != want(l) {
            return Err(TpError::Input(format!(
                "{what}: {} needs {} values, got {}",
                l.name,
                want(l),
                v.len()
            )));
        }
    }
    Ok(())
}
