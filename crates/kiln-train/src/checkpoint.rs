//! Checkpoints: `RUN_DIR/checkpoints/step_XXXXXXXX/` holding the model
//! (`model.safetensors` + `config.json`, Hugging Face GPT-2 format) and
//! `training_state.safetensors` (AdamW moments as tensors; step, data
//! position, RNG and run config as JSON in the header metadata).
//!
//! A checkpoint is written into `checkpoints/.step_XXXXXXXX.PID.tmp/` (unique
//! to the writing process) and renamed into place, so a directory named
//! `step_*` is complete; temp directories left by killed runs are removed
//! when the next run claims the run directory (`DirLock::claim`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_abi::BackendBox;
use kiln_model::safetensors_stream::{write_f32_tensors, StreamError, TensorSpec};
use kiln_model::Gpt;
use kiln_optim::{AdamW, AdamWState};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::loader::LoaderPosition;
use crate::TrainError;

pub const STATE_FILE: &str = "training_state.safetensors";
const STATE_KEY: &str = "kiln_training_state";
const STATE_FORMAT: u32 = 1;

/// Everything besides weights and moments that a resume needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    pub format: u32,
    /// Optimizer steps done.
    pub step: u64,
    pub config: TrainConfig,
    pub loader: LoaderPosition,
    /// The data path the run was started with (for messages).
    pub data: PathBuf,
    /// Consecutive non-finite steps at the time of the checkpoint.
    pub bad_steps: u32,
    /// The trainer's RNG (xoshiro state): sampling after training, future
    /// dropout. Kept so a resumed run draws the same numbers.
    pub rng: [u64; 4],
    /// Parameter names, in the order of the optimizer moments.
    pub param_names: Vec<String>,
    /// f16 training: the dynamic loss scale and its clean-step count.
    #[serde(default)]
    pub loss_scaler: Option<crate::scaler::LossScaler>,
}

/// `RUN_DIR/checkpoints`.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

pub fn checkpoint_dir(run_dir: &Path, step: u64) -> PathBuf {
    checkpoints_dir(run_dir).join(format!("step_{step:08}"))
}

/// Complete checkpoints of a run, oldest first.
pub fn list_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    Ok(list_step_dirs(run_dir)?
        .into_iter()
        .filter(|(_, _, complete)| *complete)
        .map(|(step, path, _)| (step, path))
        .collect())
}

/// `step_*` directories that lack a file a resume needs (a checkpoint
/// copied in part, or a file deleted), oldest first.
pub fn incomplete_checkpoints(run_dir: &Path) -> Result<Vec<(u64, PathBuf)>, TrainError> {
    Ok(list_step_dirs(run_dir)?
        .into_iter()
        .filter(|(_, _, complete)| !*complete)
        .map(|(step, path, _)| (step, path))
        .collect())
}

/// Removes the oldest complete checkpoints until `keep_last` remain (the
/// newest is always kept). Each goes by a rename to a temp name first, so
/// a kill midway leaves no half-deleted `step_*` directory.
pub fn prune_checkpoints(run_dir: &Path, keep_last: usize) -> Result<Vec<PathBuf>, TrainError> {
    let all = list_checkpoints(run_dir)?;
    let keep = keep_last.max(1);
    let mut removed = Vec::new();
    for (_, dir) in all.iter().take(all.len().saturating_sub(keep)) {
        let doomed = kiln_stdx::fs::temp_sibling(dir);
        std::fs::rename(dir, &doomed).map_err(|e| TrainError::io(dir, e))?;
        std::fs::remove_dir_all(&doomed).map_err(|e| TrainError::io(&doomed, e))?;
        removed.push(dir.clone());
    }
    Ok(removed)
}

/// Every `step_*` directory: (step, path, whether it is complete).
fn list_step_dirs(run_dir: &Path) -> Result<Vec<(u64, PathBuf, bool)>, TrainError> {
    let dir = checkpoints_dir(run_dir);
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(TrainError::io(&dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| TrainError::io(&dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(step) = name
            .strip_prefix("step_")
            .filter(|d| d.len() >= 8 && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let complete = ["model.safetensors", "config.json", STATE_FILE]
            .iter()
            .all(|f| path.join(f).is_file());
        out.push((step, path, complete));
    }
    out.sort();
    Ok(out)
}

/// The newest complete checkpoint, if any.
pub fn latest_checkpoint(run_dir: &Path) -> Result<Option<(u64, PathBuf)>, TrainError> {
    Ok(list_checkpoints(run_dir)?.pop())
}

/// Writes the checkpoint of `state.step`; returns its directory. Weights
/// and moments stream from the backend to the files one tensor at a time,
/// so a checkpoint adds about one tensor to peak memory.
pub fn write_checkpoint(
    be: &mut BackendBox,
    run_dir: &Path,
    model: &Gpt,
    state: &TrainingState,
    optimizer: &AdamW,
) -> Result<PathBuf, TrainError> {
    let dest = checkpoint_dir(run_dir, state.step);
    if dest.exists() {
        return Err(TrainError::checkpoint(
            &dest,
            "already exists; a run never rewrites a checkpoint (use a new --out)",
        ));
    }
    let tmp = kiln_stdx::fs::temp_sibling(&dest);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| TrainError::io(&tmp, e))?;
    model.save_pretrained(be, &tmp)?;
    let file = tmp.join(STATE_FILE);
    write_state(be, &file, state, optimizer)?;
    kiln_stdx::fs::rename_dir_atomic(&tmp, &dest).map_err(|e| TrainError::io(&dest, e))?;
    Ok(dest)
}

/// `training_state.safetensors`: `m.NAME` and `v.NAME` per parameter,
/// streamed from the optimizer's buffers, and the state as header metadata.
fn write_state(
    be: &mut BackendBox,
    file: &Path,
    state: &TrainingState,
    opt: &AdamW,
) -> Result<(), TrainError> {
    let mut tensors = Vec::with_capacity(2 * state.param_names.len());
    for (i, name) in state.param_names.iter().enumerate() {
        let len = opt.moment_len(i).ok_or_else(|| {
            TrainError::checkpoint(
                file,
                format!("the optimizer has no moments for parameter {i} ({name})"),
            )
        })?;
        tensors.push(TensorSpec::new(format!("m.{name}"), vec![len]));
        tensors.push(TensorSpec::new(format!("v.{name}"), vec![len]));
    }
    let json =
        serde_json::to_string(state).map_err(|e| TrainError::checkpoint(file, e.to_string()))?;
    let meta = BTreeMap::from([
        (STATE_KEY.to_string(), json),
        ("kiln_adamw_step".to_string(), opt.step_count().to_string()),
    ]);
    write_f32_tensors(file, &tensors, &meta, |k| {
        opt.export_moment(be, k / 2, k % 2 == 1)
    })
    .map_err(|e| match e {
        StreamError::Io(e) => TrainError::io(file, e),
        StreamError::Produce(e) => e.into(),
    })
}

/// Reads `dir/training_state.safetensors`.
pub fn read_training_state(dir: &Path) -> Result<(TrainingState, AdamWState), TrainError> {
    let path = dir.join(STATE_FILE);
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let bad = |p: String| {
        TrainError::checkpoint(
            &path,
            format!("{p}; the file is corrupt or not a kiln training state"),
        )
    };
    let (_, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| bad(e.to_string()))?;
    let info = meta.metadata().clone().unwrap_or_default();
    let json = info
        .get(STATE_KEY)
        .ok_or_else(|| bad(format!("no `{STATE_KEY}` entry in the header")))?;
    let state: TrainingState = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    if state.format != STATE_FORMAT {
        return Err(bad(format!(
            "format {} (this kiln reads {STATE_FORMAT})",
            state.format
        )));
    }
    let adamw_step: u64 = info
        .get("kiln_adamw_step")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no `kiln_adamw_step` entry".into()))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
    let read = |name: String| -> Result<Vec<f32>, TrainError> {
        let t = tensors
            .tensor(&name)
            .map_err(|e| bad(format!("tensor {name}: {e}")))?;
        if t.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor {name} is {:?}, not F32", t.dtype())));
        }
        Ok(t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    };
    let mut opt = AdamWState {
        step: adamw_step,
        m: Vec::new(),
        v: Vec::new(),
    };
    for name in &state.param_names {
        opt.m.push(read(format!("m.{name}"))?);
        opt.v.push(read(format!("v.{name}"))?);
    }
    Ok((state, opt))
}

pub(crate) fn new_state_format() -> u32 {
    STATE_FORMAT
}
