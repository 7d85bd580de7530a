//! [`CpuBackend`]: the built-in implementation of [`kiln_abi::Backend`].
//!
//! This file holds the type, its constructors and the trait impl, which only
//! forwards each method (inside `guard`, so a panic becomes an error) to an
//! `*_impl` method in one of the submodules, grouped as the trait groups them.

mod attention;
mod buffers;
mod elementwise;
mod layers;
mod loss;
mod optim;
mod routing;

use abi_stable::std_types::{ROption, RResult, RSlice, RSliceMut, RString, RVec};
use kiln_abi::{
    guard::guard, op_names, AdamWArgs, AttentionArgs, AttentionBackwardArgs, AttentionShape,
    Backend, BackendInfo, BufId, BufInfo, CollectiveArgs, CommId, DType, EmbeddingArgs,
    EmbeddingBackwardArgs, HostRegion, KvAttentionArgs, MatmulArgs, NormArgs, NormBackwardArgs,
    OpSupport, Reduce, RopeArgs, Rounding, Unary,
};

use crate::gemm::GemmEngine;
use crate::store::Store;
use crate::validate::{operands, Operands};

/// The CPU backend: host buffers plus a dedicated rayon pool.
///
/// Determinism: every op gives bit-identical results for the same inputs,
/// run after run, and for any thread count (work is split at shape-determined
/// boundaries and partial results are combined in a fixed order).
pub struct CpuBackend {
    store: Store,
    pool: rayon::ThreadPool,
    threads: usize,
    engine: GemmEngine,
    /// bf16 x bf16 matmuls run the AVX512-BF16 kernel ([`crate::gemm_bf16`])
    /// instead of widening to f32.
    bf16_gemm: bool,
}

/// Ops whose float operands are f32 only (routers' scores, statistics).
const F32_ONLY: &[&str] = &[
    "step_control",
    "topk_forward",
    "topk_backward",
    "normalize_rows_forward",
    "normalize_rows_backward",
    "index_counts",
];

/// Device communicators: the CPU backend has none.
const COLLECTIVES: &[&str] = &[
    "comm_unique_id",
    "comm_init",
    "collective",
    "comm_wait",
    "comm_destroy",
];

impl CpuBackend {
    /// A backend with `threads` worker threads (`None` or `Some(0)`: one per
    /// available core).
    pub fn new(threads: Option<usize>) -> CpuBackend {
        CpuBackend::with_engine(threads, GemmEngine::Gemm)
    }

    /// As [`CpuBackend::new`], choosing the GEMM micro-kernel library.
    pub fn with_engine(threads: Option<usize>, engine: GemmEngine) -> CpuBackend {
        let threads = threads.filter(|&n| n > 0).unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("kiln-cpu-{i}"))
            .build()
            .expect("kiln-tensor: cannot start the CPU backend's worker threads");
        CpuBackend {
            store: Store::default(),
            pool,
            threads,
            engine,
            bf16_gemm: crate::gemm_bf16::enabled_by_env(),
        }
    }

    /// Whether bf16 x bf16 matmuls use the native bf16 kernel (default: when
    /// the CPU has AVX512-BF16, unless `KILN_CPU_BF16_GEMM=0`).
    pub fn bf16_gemm(&self) -> bool {
        self.bf16_gemm
    }

    /// Turns the native bf16 kernel on or off; asking for it on a CPU without
    /// AVX512-BF16 keeps the widening path. Returns the resulting setting.
    pub fn set_bf16_gemm(&mut self, on: bool) -> bool {
        self.bf16_gemm = on && crate::gemm_bf16::available();
        self.bf16_gemm
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Number of live buffers and views (for leak checks in tests).
    pub fn live_buffers(&self) -> usize {
        self.store.len()
    }

    /// Resolves the operands (absent optional ones are `None`), refuses an
    /// output that overlaps another operand, and runs `f` on the pool.
    fn exec<R: Send>(
        &mut self,
        op: &'static str,
        outs: &[(&'static str, Option<BufId>)],
        ins: &[(&'static str, Option<BufId>)],
        f: impl FnOnce(&Operands<'_>) -> Result<R, String> + Send,
    ) -> Result<R, String> {
        let o = operands(&self.store, op, outs, ins)?;
        self.pool.install(|| f(&o))
    }

    fn info_impl(&self) -> BackendInfo {
        let halves = [DType::F32, DType::BF16, DType::F16];
        let ops = op_names()
            .filter(|op| !COLLECTIVES.contains(op))
            .map(|op| OpSupport {
                name: op.into(),
                dtypes: if F32_ONLY.contains(&op) {
                    RVec::from(vec![DType::F32])
                } else {
                    RVec::from(halves.to_vec())
                },
            })
            .collect();
        BackendInfo {
            name: "cpu".into(),
            device: format!("CPU, {} threads", self.threads).into(),
            dtypes: RVec::from(vec![DType::F32, DType::BF16, DType::F16, DType::U32]),
            ops,
            host_mapped: true,
            collectives: false,
        }
    }
}

fn ffi<T>(r: Result<T, String>) -> RResult<T, RString> {
    match r {
        Ok(v) => RResult::ROk(v),
        Err(e) => RResult::RErr(RString::from(e)),
    }
}

fn no_collectives<T>(op: &str) -> RResult<T, RString> {
    RResult::RErr(RString::from(format!(
        "{op}: not supported by the CPU backend (BackendInfo::collectives is false); \
         kiln-parallel's host communicators move CPU buffers (host_region) instead"
    )))
}

/// `fn name(&mut self, args..) { guard("name", || ffi(self.name_impl(args..))) }`.
macro_rules! forward {
    ($( fn $name:ident => $imp:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty; )*) => {
        $(
            fn $name(&mut self $(, $arg: $ty)*) -> RResult<$ret, RString> {
                guard(stringify!($name), || ffi(self.$imp($($arg),*)))
            }
        )*
    };
}

impl Backend for CpuBackend {
    fn info(&mut self) -> RResult<BackendInfo, RString> {
        guard("info", || RResult::ROk(self.info_impl()))
    }

    fn upload(&mut self, buf: BufId, bytes: RSlice<'_, u8>) -> RResult<(), RString> {
        guard("upload", || ffi(self.upload_impl(buf, bytes.as_slice())))
    }

    fn download(&mut self, buf: BufId, mut out: RSliceMut<'_, u8>) -> RResult<(), RString> {
        guard("download", || {
            ffi(self.download_impl(buf, out.as_mut_slice()))
        })
    }

    fn synchronize(&mut self) -> RResult<(), RString> {
        RResult::ROk(())
    }

    forward! {
        fn alloc => alloc_impl(dtype: DType, len: usize) -> BufId;
        fn free => free_impl(buf: BufId) -> ();
        fn view => view_impl(parent: BufId, offset: usize, len: usize) -> BufId;
        fn buffer_info => buffer_info_impl(buf: BufId) -> BufInfo;
        fn host_region => host_region_impl(buf: BufId) -> ROption<HostRegion>;
        fn zero => zero_impl(buf: BufId) -> ();
        fn copy => copy_impl(dst: BufId, src: BufId, n: usize) -> ();
        fn cast => cast_impl(dst: BufId, src: BufId, n: usize, rounding: Rounding, seed: u64) -> ();
        fn scale => scale_impl(buf: BufId, n: usize, factor: f32) -> ();
        fn add => add_impl(out: BufId, a: BufId, b: BufId, n: usize) -> ();
        fn axpy => axpy_impl(dst: BufId, src: BufId, n: usize, alpha: f32) -> ();
        fn unary_forward => unary_forward_impl(kind: Unary, out: BufId, inp: BufId, n: usize) -> ();
        fn unary_backward => unary_backward_impl(kind: Unary, dinp: BufId, inp: BufId, dout: BufId, n: usize) -> ();
        fn swiglu_forward => swiglu_forward_impl(out: BufId, inp: BufId, rows: usize, f: usize) -> ();
        fn swiglu_backward => swiglu_backward_impl(dinp: BufId, inp: BufId, dout: BufId, rows: usize, f: usize) -> ();
        fn reduce => reduce_impl(kind: Reduce, dst: BufId, slot: usize, src: BufId, n: usize) -> ();
        fn step_control => step_control_impl(stats: BufId, max_norm: f32, inv_loss_scale: f32) -> ();
        fn embedding_forward => embedding_forward_impl(args: EmbeddingArgs) -> ();
        fn embedding_backward => embedding_backward_impl(args: EmbeddingBackwardArgs) -> ();
        fn matmul => matmul_impl(args: MatmulArgs) -> ();
        fn bias_backward => bias_backward_impl(dbias: BufId, dout: BufId, rows: usize, cols: usize) -> ();
        fn norm_forward => norm_forward_impl(args: NormArgs) -> ();
        fn norm_backward => norm_backward_impl(args: NormBackwardArgs) -> ();
        fn rope => rope_impl(args: RopeArgs) -> ();
        fn attention_workspace_len => attention_workspace_len_impl(shape: AttentionShape) -> usize;
        fn attention_forward => attention_forward_impl(args: AttentionArgs) -> ();
        fn attention_backward => attention_backward_impl(args: AttentionBackwardArgs) -> ();
        fn attention_kv_forward => attention_kv_forward_impl(args: KvAttentionArgs) -> ();
        fn crossentropy_forward => crossentropy_forward_impl(losses: BufId, lse: BufId, logits: BufId, targets: BufId, rows: usize, v: usize, vp: usize) -> ();
        fn crossentropy_backward => crossentropy_backward_impl(dlogits: BufId, logits: BufId, lse: BufId, targets: BufId, dlosses: BufId, rows: usize, v: usize, vp: usize) -> ();
        fn softmax_forward => softmax_forward_impl(out: BufId, lse: ROption<BufId>, inp: BufId, rows: usize, cols: usize) -> ();
        fn softmax_backward => softmax_backward_impl(dinp: BufId, out: BufId, dout: BufId, dlse: ROption<BufId>, rows: usize, cols: usize) -> ();
        fn topk_forward => topk_forward_impl(values: BufId, indices: BufId, scores: BufId, bias: ROption<BufId>, rows: usize, cols: usize, k: usize) -> ();
        fn topk_backward => topk_backward_impl(dscores: BufId, dvalues: BufId, indices: BufId, rows: usize, cols: usize, k: usize) -> ();
        fn normalize_rows_forward => normalize_rows_forward_impl(out: BufId, inp: BufId, rows: usize, cols: usize) -> ();
        fn normalize_rows_backward => normalize_rows_backward_impl(dinp: BufId, inp: BufId, out: BufId, dout: BufId, rows: usize, cols: usize) -> ();
        fn gather_rows => gather_rows_impl(out: BufId, src: BufId, indices: BufId, n: usize, cols: usize) -> ();
        fn scatter_add_rows => scatter_add_rows_impl(dst: BufId, src: BufId, indices: BufId, weights: ROption<BufId>, n: usize, cols: usize) -> ();
        fn rows_dot => rows_dot_impl(out: BufId, a: BufId, a_indices: ROption<BufId>, b: BufId, n: usize, cols: usize) -> ();
        fn index_counts => index_counts_impl(counts: BufId, indices: BufId, n: usize, e: usize) -> ();
        fn adamw => adamw_impl(args: AdamWArgs) -> ();
    }

    fn comm_unique_id(&mut self) -> RResult<RVec<u8>, RString> {
        no_collectives("comm_unique_id")
    }

    fn comm_init(
        &mut self,
        _unique_id: RSlice<'_, u8>,
        _rank: usize,
        _world: usize,
    ) -> RResult<CommId, RString> {
        no_collectives("comm_init")
    }

    fn collective(&mut self, _args: CollectiveArgs) -> RResult<(), RString> {
        no_collectives("collective")
    }

    fn comm_wait(&mut self, _comm: CommId) -> RResult<(), RString> {
        no_collectives("comm_wait")
    }

    fn comm_destroy(&mut self, _comm: CommId) -> RResult<(), RString> {
        no_collectives("comm_destroy")
    }
}
