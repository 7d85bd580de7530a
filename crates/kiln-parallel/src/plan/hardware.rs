//! The GPUs the planner knows, with the figures it uses and where they come
//! from. Link efficiencies follow Calculon's H100 system file (NVLink at 0.6
//! of its nominal bandwidth, InfiniBand at 0.9): nominal peaks are never what
//! a collective sees.

use super::PlanError;

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

#[derive(Clone, Debug, PartialEq)]
pub struct Gpu {
    pub name: &'static str,
    /// Dense bf16 tensor-core peak, FLOP/s (NVIDIA data sheets).
    pub peak_bf16_flops: f64,
    /// Device memory, bytes.
    pub memory_bytes: f64,
    /// HBM bandwidth, bytes/s (what the optimizer step streams through).
    pub hbm_bytes_per_s: f64,
    /// NVLink bandwidth per GPU per direction, bytes/s, before efficiency.
    pub nvlink_bytes_per_s: f64,
    /// Network bandwidth per GPU (one NIC per GPU), bytes/s, before efficiency.
    pub network_bytes_per_s: f64,
    /// GPUs that share an NVLink domain (an HGX board).
    pub gpus_per_node: usize,
}

/// Share of nominal NVLink bandwidth a ring collective reaches (Calculon).
pub const NVLINK_EFFICIENCY: f64 = 0.6;
/// Share of nominal network bandwidth a ring collective reaches (Calculon).
pub const NETWORK_EFFICIENCY: f64 = 0.9;
/// Per-step latency of a ring collective inside a node and across nodes.
pub const NVLINK_LATENCY_S: f64 = 5e-6;
pub const NETWORK_LATENCY_S: f64 = 10e-6;

/// The names `--gpu` accepts.
pub const GPUS: [&str; 3] = ["a100", "h100", "h200"];

impl Gpu {
    pub fn named(name: &str) -> Result<Gpu, PlanError> {
        let gpu = match name {
            // A100 SXM4 80 GB: 312 TFLOP/s bf16, 2.0 TB/s, NVLink 3 600 GB/s
            // both ways; Selene (Narayanan et al.) has one 200 Gb/s HDR NIC per GPU.
            "a100" => Gpu {
                name: "a100",
                peak_bf16_flops: 312e12,
                memory_bytes: 80.0 * GIB,
                hbm_bytes_per_s: 2.039e12,
                nvlink_bytes_per_s: 300e9,
                network_bytes_per_s: 25e9,
                gpus_per_node: 8,
            },
            // H100 SXM5: 989 TFLOP/s bf16 dense, 80 GB HBM3 at 3.35 TB/s,
            // NVLink 4 900 GB/s both ways, one 400 Gb/s NDR NIC per GPU.
            "h100" => Gpu {
                name: "h100",
                peak_bf16_flops: 989e12,
                memory_bytes: 80.0 * GIB,
                hbm_bytes_per_s: 3.35e12,
                nvlink_bytes_per_s: 450e9,
                network_bytes_per_s: 50e9,
                gpus_per_node: 8,
            },
            // H200 SXM: the H100's compute and links with 141 GB of HBM3e at
            // 4.8 TB/s (nvidia-smi shows 140 GiB).
            "h200" => Gpu {
                name: "h200",
                peak_bf16_flops: 989e12,
                memory_bytes: 140.0 * GIB,
                hbm_bytes_per_s: 4.8e12,
                nvlink_bytes_per_s: 450e9,
                network_bytes_per_s: 50e9,
                gpus_per_node: 8,
            },
            other => {
                return Err(PlanError::Request(format!(
                    "unknown GPU {other:?}; known: {}",
                    GPUS.join(", ")
                )))
            }
        };
        Ok(gpu)
    }
}
