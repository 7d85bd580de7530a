//! One module per group of ops: each holds its f64 reference and the cases
//! that check the backend against it (`fn(&mut Env, DType) -> cases`).

pub mod adamw;
pub mod attention;
pub mod crossentropy;
pub mod elementwise;
pub mod embedding;
pub mod matmul;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod routing;
pub mod softmax;

use kiln_abi::DType;

use crate::case::OpCase;
use crate::env::Env;

/// Builds the cases of one op in one dtype.
pub type Build = fn(&mut Env, DType) -> Result<Vec<OpCase>, String>;

/// An op the suite checks with [`OpCase`]s.
pub struct OpSpec {
    pub op: &'static str,
    /// Checked in every float dtype the backend claims for it; otherwise
    /// its float operands are f32 by definition and it runs once.
    pub generic: bool,
    pub build: Build,
}

const fn spec(op: &'static str, generic: bool, build: Build) -> OpSpec {
    OpSpec { op, generic, build }
}

/// Every op with case-based checks, in `kiln_abi::METHODS` order.
pub const OPS: &[OpSpec] = &[
    spec("zero", true, elementwise::zero),
    spec("copy", true, elementwise::copy),
    spec("cast", false, elementwise::cast),
    spec("scale", true, elementwise::scale),
    spec("add", true, elementwise::add),
    spec("axpy", true, elementwise::axpy),
    spec("unary_forward", true, elementwise::unary_forward),
    spec("unary_backward", true, elementwise::unary_backward),
    spec("swiglu_forward", true, elementwise::swiglu_forward),
    spec("swiglu_backward", true, elementwise::swiglu_backward),
    spec("reduce", true, reduce::reduce),
    spec("step_control", false, reduce::step_control),
    spec("embedding_forward", true, embedding::forward),
    spec("embedding_backward", true, embedding::backward),
    spec("matmul", true, matmul::matmul),
    spec("bias_backward", true, matmul::bias_backward),
    spec("norm_forward", true, norm::forward),
    spec("norm_backward", true, norm::backward),
    spec("rope", true, rope::rope),
    spec("attention_forward", true, attention::forward),
    spec("attention_backward", true, attention::backward),
    spec("attention_kv_forward", true, attention::kv_forward),
    spec("crossentropy_forward", true, crossentropy::forward),
    spec("crossentropy_backward", true, crossentropy::backward),
    spec("softmax_forward", false, softmax::forward),
    spec("softmax_backward", false, softmax::backward),
    spec("topk_forward", false, routing::topk_forward),
    spec("topk_backward", false, routing::topk_backward),
    spec(
        "normalize_rows_forward",
        false,
        routing::normalize_rows_forward,
    ),
    spec(
        "normalize_rows_backward",
        false,
        routing::normalize_rows_backward,
    ),
    spec("gather_rows", true, routing::gather_rows),
    spec("scatter_add_rows", true, routing::scatter_add_rows),
    spec("rows_dot", true, routing::rows_dot),
    spec("index_counts", false, routing::index_counts),
    spec("adamw", true, adamw::adamw),
];

/// `Ok` when the values are bit for bit `want`, where a NaN may be any NaN.
pub fn same_bits_or_nan(dtype: DType, got: &[u8], want: &[f64]) -> Result<(), String> {
    let got_v = crate::values::decode(dtype, got);
    let want_b = crate::values::encode(dtype, want);
    let size = dtype.size();
    for (i, w) in want.iter().enumerate() {
        let g = &got[i * size..(i + 1) * size];
        let ok = if w.is_nan() {
            got_v[i].is_nan()
        } else {
            g == &want_b[i * size..(i + 1) * size]
        };
        if !ok {
            return Err(format!(
                "element [{i}]: got {:e} ({g:02x?}), want {w:e} ({:02x?})",
                got_v[i],
                &want_b[i * size..(i + 1) * size]
            ));
        }
    }
    Ok(())
}
