//! [`OpCase`]: one call of one op with its operands and what must come out,
//! run the ways the suite runs every op: on plain buffers, through views, through
//! views of views, twice for determinism, and with each operand broken in
//! turn for the error contracts.

use std::panic::{catch_unwind, AssertUnwindSafe};

use kiln_abi::{BackendBox, BufId, DType, RResult, RSlice, RSliceMut, RString};

use crate::values::{compare, compare_bits, decode, encode, encode_u32, round_to, tolerance};

/// An op call over the operands' buffer ids, in operand order.
pub type Call = Box<dyn Fn(&mut BackendBox, &[BufId]) -> RResult<(), RString>>;
/// A check over every operand's bytes after the call (in operand order).
pub type Verify = Box<dyn Fn(&[Vec<u8>]) -> Result<(), String>>;

/// What an operand may hold, which decides the wrong dtype the contracts try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Float data (f32 or 16-bit where claimed): a u32 buffer is wrong.
    Float,
    /// Always f32 (statistics, losses, master weights, moments, routers): bf16 is wrong.
    F32Only,
    /// u32 token ids, indices, positions, segments: f32 is wrong.
    Index,
    /// Any dtype is valid (`zero`): no wrong-dtype check.
    Any,
}

pub struct Operand {
    pub name: &'static str,
    pub dtype: DType,
    pub bytes: Vec<u8>,
    pub kind: Kind,
    /// The op needs every element: one fewer must be refused.
    pub tight: bool,
}

impl Operand {
    pub fn len(&self) -> usize {
        self.bytes.len() / self.dtype.size()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

enum Want {
    /// Within the tolerance of max-abs; NaN marks an unspecified element.
    Near(Vec<f64>, f64),
    Bits(Vec<u8>),
}

/// One op call to check.
pub struct OpCase {
    pub op: &'static str,
    pub label: String,
    pub dtype: DType,
    pub operands: Vec<Operand>,
    values: Vec<Vec<f64>>,
    prepare: Option<Call>,
    call: Option<Call>,
    expects: Vec<(usize, Want)>,
    verifies: Vec<Verify>,
    must_fail: Option<String>,
}

/// Where the operands live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    Plain,
    /// Each operand a view at an odd offset inside a larger buffer.
    View,
    /// Each operand a view of a view of a larger buffer.
    ViewOfView,
}

impl OpCase {
    pub fn new(op: &'static str, label: impl Into<String>, dtype: DType) -> OpCase {
        OpCase {
            op,
            label: label.into(),
            dtype,
            operands: Vec::new(),
            values: Vec::new(),
            prepare: None,
            call: None,
            expects: Vec::new(),
            verifies: Vec::new(),
            must_fail: None,
        }
    }

    fn push(
        &mut self,
        name: &'static str,
        dtype: DType,
        bytes: Vec<u8>,
        values: Vec<f64>,
        kind: Kind,
    ) -> usize {
        self.operands.push(Operand {
            name,
            dtype,
            bytes,
            kind,
            tight: true,
        });
        self.values.push(values);
        self.operands.len() - 1
    }

    /// A float operand of `dtype`; `values` are rounded to it first (what
    /// the reference then reads through [`OpCase::vals`]).
    pub fn float(&mut self, name: &'static str, dtype: DType, values: Vec<f64>) -> usize {
        let values: Vec<f64> = values.iter().map(|&x| round_to(dtype, x)).collect();
        let bytes = encode(dtype, &values);
        self.push(name, dtype, bytes, values, Kind::Float)
    }

    /// A float operand in the case's dtype.
    pub fn data(&mut self, name: &'static str, values: Vec<f64>) -> usize {
        self.float(name, self.dtype, values)
    }

    /// An operand that is always f32.
    pub fn f32(&mut self, name: &'static str, values: Vec<f64>) -> usize {
        let i = self.float(name, DType::F32, values);
        self.operands[i].kind = Kind::F32Only;
        i
    }

    /// A u32 operand (ids, indices, positions, segments).
    pub fn index(&mut self, name: &'static str, values: Vec<u32>) -> usize {
        let f = values.iter().map(|&v| v as f64).collect();
        self.push(name, DType::U32, encode_u32(&values), f, Kind::Index)
    }

    /// Marks an operand larger than the op needs (no too-small check).
    pub fn loose(&mut self, operand: usize) {
        self.operands[operand].tight = false;
    }

    pub fn set_kind(&mut self, operand: usize, kind: Kind) {
        self.operands[operand].kind = kind;
    }

    /// The (rounded) host values of an operand.
    pub fn vals(&self, operand: usize) -> Vec<f64> {
        self.values[operand].clone()
    }

    /// The operand must come out within the case's tolerance of `want`.
    pub fn expect(&mut self, operand: usize, want: Vec<f64>) {
        let tol = tolerance(self.dtype).max(tolerance(self.operands[operand].dtype));
        self.expects.push((operand, Want::Near(want, tol)));
    }

    /// The operand must come out as exactly these values (bit for bit).
    pub fn expect_exact(&mut self, operand: usize, want: &[f64]) {
        let dt = self.operands[operand].dtype;
        self.expects.push((operand, Want::Bits(encode(dt, want))));
    }

    pub fn expect_u32(&mut self, operand: usize, want: &[u32]) {
        self.expects.push((operand, Want::Bits(encode_u32(want))));
    }

    /// The operand must be left exactly as uploaded.
    pub fn expect_unchanged(&mut self, operand: usize) {
        let bytes = self.operands[operand].bytes.clone();
        self.expects.push((operand, Want::Bits(bytes)));
    }

    /// A check over all operands after the call (relations between outputs).
    pub fn verify(&mut self, f: impl Fn(&[Vec<u8>]) -> Result<(), String> + 'static) {
        self.verifies.push(Box::new(f));
    }

    /// Runs before the call, with valid operands (a forward before its backward).
    pub fn prepare(
        &mut self,
        f: impl Fn(&mut BackendBox, &[BufId]) -> RResult<(), RString> + 'static,
    ) {
        self.prepare = Some(Box::new(f));
    }

    pub fn call(
        &mut self,
        f: impl Fn(&mut BackendBox, &[BufId]) -> RResult<(), RString> + 'static,
    ) {
        self.call = Some(Box::new(f));
    }

    /// The call must be refused (`why` says what is wrong with it).
    pub fn must_fail(&mut self, why: impl Into<String>) {
        self.must_fail = Some(why.into());
    }

    pub fn is_must_fail(&self) -> bool {
        self.must_fail.is_some()
    }

    fn the_call(&self) -> &Call {
        self.call.as_ref().expect("every OpCase sets its call")
    }
}

/// Checks the case's results with the operands placed as asked.
pub fn check(be: &mut BackendBox, case: &OpCase, placement: Placement) -> Result<(), String> {
    if let Some(why) = &case.must_fail {
        let ids = upload_plain(be, case)?;
        let r = (case.the_call())(be, &ids).into_result();
        free_all(be, &ids);
        return match r {
            Ok(()) => Err(format!("accepted a call that must be refused ({why})")),
            Err(e) => names_op(case.op, e.as_str()),
        };
    }
    let out = execute(be, case, placement)?;
    for (i, want) in &case.expects {
        let op = &case.operands[*i];
        let r = match want {
            Want::Near(w, tol) => compare(&decode(op.dtype, &out[*i]), w, *tol),
            Want::Bits(w) => compare_bits(op.dtype, &out[*i], w),
        };
        r.map_err(|e| format!("`{}` ({}): {e}", op.name, op.dtype))?;
    }
    for v in &case.verifies {
        v(&out)?;
    }
    Ok(())
}

/// The same call twice on fresh buffers gives the same bits in every operand.
pub fn check_determinism(be: &mut BackendBox, case: &OpCase) -> Result<(), String> {
    let first = execute(be, case, Placement::Plain)?;
    let second = execute(be, case, Placement::Plain)?;
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        let op = &case.operands[i];
        compare_bits(op.dtype, b, a)
            .map_err(|e| format!("second run differs in `{}`: {e}", op.name))?;
    }
    Ok(())
}

/// Each operand in turn replaced by a never-allocated id, a freed buffer,
/// a buffer of a wrong dtype and one a element too small: every call must
/// return an error naming the op, never succeed or panic. After a panic the
/// backend is replaced by `fresh()` (its state is unknown).
pub fn check_contracts(
    be: &mut BackendBox,
    fresh: &dyn Fn() -> BackendBox,
    case: &OpCase,
) -> Result<(), String> {
    let mut problems = Vec::new();
    for (k, op) in case.operands.iter().enumerate() {
        let mut subs: Vec<&str> = vec!["a never-allocated id", "a freed buffer"];
        if op.kind != Kind::Any {
            subs.push("a buffer of the wrong dtype");
        }
        if op.tight && !op.is_empty() {
            subs.push("a buffer one element too small");
        }
        for sub in subs {
            let r = catch_unwind(AssertUnwindSafe(|| contract_call(be, case, k, sub)));
            match r {
                Ok(Ok(())) => {}
                Ok(Err(p)) => problems.push(p),
                Err(payload) => {
                    problems.push(format!(
                        "panicked on {sub} for `{}`: {}",
                        op.name,
                        panic_message(&payload)
                    ));
                    *be = fresh();
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn contract_call(be: &mut BackendBox, case: &OpCase, k: usize, sub: &str) -> Result<(), String> {
    let op = &case.operands[k];
    let mut ids = upload_plain(be, case)?;
    if let Some(prep) = &case.prepare {
        if let Err(e) = prep(be, &ids).into_result() {
            free_all(be, &ids);
            return Err(format!("setup for the `{}` check failed: {e}", op.name));
        }
    }
    // Allocated after every valid operand, so that a backend reusing ids
    // cannot hand the freed id to a valid operand.
    let mut extra = None;
    ids[k] = match sub {
        "a never-allocated id" => BufId(0xDEAD_0000_0000 + k as u64),
        "a freed buffer" => {
            let id = alloc(be, op.dtype, op.len())?;
            be.free(id)
                .into_result()
                .map_err(|e| format!("free failed: {e}"))?;
            id
        }
        "a buffer of the wrong dtype" => {
            let dt = match op.kind {
                Kind::Float => DType::U32,
                Kind::F32Only => DType::BF16,
                Kind::Index | Kind::Any => DType::F32,
            };
            let id = alloc(be, dt, op.len())?;
            extra = Some(id);
            id
        }
        _ => {
            let id = alloc(be, op.dtype, op.len() - 1)?;
            let n = op.bytes.len() - op.dtype.size();
            upload(be, id, &op.bytes[..n])?;
            extra = Some(id);
            id
        }
    };
    let r = (case.the_call())(be, &ids).into_result();
    ids[k] = case_id_placeholder();
    free_all(be, &ids);
    if let Some(id) = extra {
        let _ = be.free(id);
    }
    match r {
        Ok(()) => Err(format!("accepted {sub} for `{}`", op.name)),
        Err(e) => {
            names_op(case.op, e.as_str()).map_err(|m| format!("{sub} for `{}`: {m}", op.name))
        }
    }
}

/// An id that frees nothing (the substituted slot is freed separately).
fn case_id_placeholder() -> BufId {
    BufId(u64::MAX)
}

fn names_op(op: &str, msg: &str) -> Result<(), String> {
    if msg.contains(op) {
        Ok(())
    } else {
        Err(format!("the error does not name the op `{op}`: \"{msg}\""))
    }
}

pub fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into())
}

pub fn alloc(be: &mut BackendBox, dtype: DType, len: usize) -> Result<BufId, String> {
    be.alloc(dtype, len)
        .into_result()
        .map_err(|e| format!("alloc({dtype}, {len}) failed: {e}"))
}

pub fn upload(be: &mut BackendBox, id: BufId, bytes: &[u8]) -> Result<(), String> {
    be.upload(id, RSlice::from_slice(bytes))
        .into_result()
        .map_err(|e| format!("upload failed: {e}"))
}

pub fn download(be: &mut BackendBox, id: BufId, bytes: usize) -> Result<Vec<u8>, String> {
    let mut out = vec![0u8; bytes];
    be.download(id, RSliceMut::from_mut_slice(&mut out))
        .into_result()
        .map_err(|e| format!("download failed: {e}"))?;
    Ok(out)
}

fn free_all(be: &mut BackendBox, ids: &[BufId]) {
    for &id in ids {
        if id != case_id_placeholder() {
            let _ = be.free(id);
        }
    }
}

fn upload_plain(be: &mut BackendBox, case: &OpCase) -> Result<Vec<BufId>, String> {
    let mut ids = Vec::new();
    for op in &case.operands {
        let id = alloc(be, op.dtype, op.len())?;
        ids.push(id);
        if let Err(e) = upload(be, id, &op.bytes) {
            free_all(be, &ids);
            return Err(format!("`{}`: {e}", op.name));
        }
    }
    Ok(ids)
}

/// Elements before and after a view in its parent, filled with a sentinel
/// that must survive the call.
const PAD_FRONT: usize = 3;
const PAD_BACK: usize = 2;
/// Extra elements around the outer view of a view of a view.
const OUTER_FRONT: usize = 2;
const OUTER_BACK: usize = 4;

fn sentinel(dtype: DType, n: usize) -> Vec<u8> {
    match dtype {
        DType::U32 => encode_u32(&vec![0xA5A5_A5A5; n]),
        dt => encode(dt, &vec![-7.25; n]),
    }
}

/// Uploads, runs prepare and the call, downloads every operand, and
/// (views) checks that nothing outside a view changed. Frees everything.
fn execute(
    be: &mut BackendBox,
    case: &OpCase,
    placement: Placement,
) -> Result<Vec<Vec<u8>>, String> {
    let mut to_free: Vec<BufId> = Vec::new();
    let r = execute_inner(be, case, placement, &mut to_free);
    // views first, then their parents
    for &id in to_free.iter().rev() {
        let _ = be.free(id);
    }
    r
}

fn execute_inner(
    be: &mut BackendBox,
    case: &OpCase,
    placement: Placement,
    to_free: &mut Vec<BufId>,
) -> Result<Vec<Vec<u8>>, String> {
    let mut ids = Vec::new();
    // (parent, offset of the operand in it, parent length) for views
    let mut parents = Vec::new();
    for op in &case.operands {
        let len = op.len();
        let (id, parent) = match placement {
            Placement::Plain => {
                let id = alloc(be, op.dtype, len)?;
                to_free.push(id);
                (id, None)
            }
            Placement::View | Placement::ViewOfView => {
                let outer_pad = if placement == Placement::ViewOfView {
                    (OUTER_FRONT, OUTER_BACK)
                } else {
                    (0, 0)
                };
                let total = outer_pad.0 + PAD_FRONT + len + PAD_BACK + outer_pad.1;
                let parent = alloc(be, op.dtype, total)?;
                to_free.push(parent);
                upload(be, parent, &sentinel(op.dtype, total))
                    .map_err(|e| format!("parent of `{}`: {e}", op.name))?;
                let mut base = parent;
                if placement == Placement::ViewOfView {
                    base = view(be, parent, outer_pad.0, PAD_FRONT + len + PAD_BACK)?;
                    to_free.push(base);
                }
                let id = view(be, base, PAD_FRONT, len)?;
                to_free.push(id);
                (id, Some((parent, outer_pad.0 + PAD_FRONT, total)))
            }
        };
        upload(be, id, &op.bytes).map_err(|e| format!("`{}`: {e}", op.name))?;
        ids.push(id);
        parents.push(parent);
    }
    if let Some(prep) = &case.prepare {
        prep(be, &ids)
            .into_result()
            .map_err(|e| format!("the setup call before `{}` failed: {e}", case.op))?;
    }
    (case.the_call())(be, &ids)
        .into_result()
        .map_err(|e| format!("returned an error: {e}"))?;
    let mut out = Vec::new();
    for (i, op) in case.operands.iter().enumerate() {
        let bytes =
            download(be, ids[i], op.bytes.len()).map_err(|e| format!("`{}`: {e}", op.name))?;
        if let Some((parent, offset, total)) = parents[i] {
            let size = op.dtype.size();
            let all = download(be, parent, total * size)?;
            let pads = sentinel(op.dtype, total);
            let inside = offset * size..(offset + op.len()) * size;
            if all[..inside.start] != pads[..inside.start]
                || all[inside.end..] != pads[inside.end..]
            {
                return Err(format!(
                    "wrote outside the view `{}` (elements {}..{} of a {total}-element buffer)",
                    op.name,
                    offset,
                    offset + op.len()
                ));
            }
            if all[inside] != bytes[..] {
                return Err(format!(
                    "downloading the view `{}` differs from the same elements of its parent",
                    op.name
                ));
            }
        }
        out.push(bytes);
    }
    Ok(out)
}

fn view(be: &mut BackendBox, parent: BufId, offset: usize, len: usize) -> Result<BufId, String> {
    be.view(parent, offset, len)
        .into_result()
        .map_err(|e| format!("view({parent:?}, {offset}, {len}) failed: {e}"))
}

/// The operands' host values decoded from bytes (for `verify` closures).
pub fn values_of(dtype: DType, bytes: &[u8]) -> Vec<f64> {
    decode(dtype, bytes)
}
