//! Host buffers and views keyed by [`BufId`].
//!
//! A buffer is one 64-byte-aligned, zero-filled raw allocation (so kernels
//! get aligned rows and an allocation failure is an error, not an abort); a
//! view is an entry `(root, offset, len)` that points into its root buffer's
//! memory (a view of a view points at the same root). Ids are never reused;
//! freeing a buffer releases its memory at once and turns every later use of
//! its views into an error naming the freed buffer.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashMap;
use std::ptr::NonNull;

use kiln_abi::{BufId, BufInfo, DType, ROption};

/// Alignment of every allocation (a cache line; AVX-512 loads).
const ALIGN: usize = 64;

/// One owned, aligned, zeroed allocation.
pub struct Allocation {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the allocation is plain memory owned by this value; access goes
// through the store, which hands out slices only under `&mut CpuBackend`.
unsafe impl Send for Allocation {}
unsafe impl Sync for Allocation {}

impl Allocation {
    fn zeroed(bytes: usize) -> Result<Allocation, String> {
        // A zero-sized request still gets a real (1-byte) allocation, so every
        // buffer has a distinct, valid address.
        let layout = Layout::from_size_align(bytes.max(1), ALIGN)
            .map_err(|e| format!("cannot allocate {bytes} bytes: {e}"))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or_else(|| {
            format!(
                "out of memory: cannot allocate {bytes} bytes; free buffers or use smaller shapes"
            )
        })?;
        Ok(Allocation { ptr, layout })
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

enum Entry {
    Buffer {
        mem: Allocation,
        dtype: DType,
        len: usize,
    },
    View {
        /// The buffer (or view) it was made from, as `buffer_info` reports.
        parent: u64,
        /// Element offset in `parent`.
        offset: usize,
        /// The allocation it points into and its element offset there.
        root: u64,
        root_offset: usize,
        dtype: DType,
        len: usize,
    },
}

/// Where an operand's elements live: `len` elements of `dtype` from `ptr`,
/// which is `byte_start` bytes into allocation `root`.
#[derive(Clone, Copy, Debug)]
pub struct Region {
    pub id: BufId,
    pub root: u64,
    pub ptr: *mut u8,
    pub byte_start: usize,
    pub dtype: DType,
    pub len: usize,
}

// SAFETY: a plain address; `validate::Operands` hands out slices over it
// only after checking outputs overlap nothing else.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

impl Region {
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size()
    }

    /// Same allocation and intersecting byte ranges (empty ranges never overlap).
    pub fn overlaps(&self, other: &Region) -> bool {
        let (a0, a1) = (self.byte_start, self.byte_start + self.bytes());
        let (b0, b1) = (other.byte_start, other.byte_start + other.bytes());
        self.root == other.root && a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1
    }

    /// Identical memory (the documented in-place cases).
    pub fn same_memory(&self, other: &Region) -> bool {
        self.root == other.root && self.byte_start == other.byte_start && self.len == other.len
    }
}

/// The live buffers and views of one backend.
#[derive(Default)]
pub struct Store {
    entries: HashMap<u64, Entry>,
    next_id: u64,
}

impl Store {
    fn insert(&mut self, e: Entry) -> BufId {
        // Ids are never reused, so a stale id cannot silently hit a new buffer.
        self.next_id += 1;
        self.entries.insert(self.next_id, e);
        BufId(self.next_id)
    }

    pub fn alloc(&mut self, dtype: DType, len: usize) -> Result<BufId, String> {
        let bytes = len
            .checked_mul(dtype.size())
            .ok_or_else(|| format!("alloc: {len} {dtype} elements overflow usize bytes"))?;
        let mem = Allocation::zeroed(bytes).map_err(|e| format!("alloc: {e}"))?;
        Ok(self.insert(Entry::Buffer { mem, dtype, len }))
    }

    pub fn view(&mut self, parent: BufId, offset: usize, len: usize) -> Result<BufId, String> {
        let p = self
            .region(parent)
            .map_err(|e| format!("view: `parent`: {e}"))?;
        let end = offset.checked_add(len);
        if end.is_none_or(|e| e > p.len) {
            return Err(format!(
                "view: elements {offset}..{offset}+{len} are outside `parent` (buffer {}, {} elements); \
                 pass an offset and length inside it",
                parent.0, p.len
            ));
        }
        let root_offset = p.byte_start / p.dtype.size() + offset;
        Ok(self.insert(Entry::View {
            parent: parent.0,
            offset,
            root: p.root,
            root_offset,
            dtype: p.dtype,
            len,
        }))
    }

    pub fn free(&mut self, id: BufId) -> Result<(), String> {
        self.entries
            .remove(&id.0)
            .map(drop)
            .ok_or_else(|| format!("free: {}", unknown(id)))
    }

    pub fn info(&self, id: BufId) -> Result<BufInfo, String> {
        match self.entries.get(&id.0) {
            None => Err(unknown(id)),
            Some(Entry::Buffer { dtype, len, .. }) => Ok(BufInfo {
                dtype: *dtype,
                len: *len,
                parent: ROption::RNone,
                offset: 0,
            }),
            Some(Entry::View {
                parent,
                offset,
                dtype,
                len,
                ..
            }) => Ok(BufInfo {
                dtype: *dtype,
                len: *len,
                parent: ROption::RSome(BufId(*parent)),
                offset: *offset,
            }),
        }
    }

    /// The memory behind a buffer or view; an error for unknown ids and for
    /// views whose buffer was freed.
    pub fn region(&self, id: BufId) -> Result<Region, String> {
        match self.entries.get(&id.0) {
            None => Err(unknown(id)),
            Some(Entry::Buffer { mem, dtype, len }) => Ok(Region {
                id,
                root: id.0,
                ptr: mem.ptr.as_ptr(),
                byte_start: 0,
                dtype: *dtype,
                len: *len,
            }),
            Some(Entry::View {
                root,
                root_offset,
                dtype,
                len,
                ..
            }) => match self.entries.get(root) {
                Some(Entry::Buffer { mem, .. }) => {
                    let byte_start = root_offset * dtype.size();
                    Ok(Region {
                        id,
                        root: *root,
                        // SAFETY: `view` checked the range lies inside the root.
                        ptr: unsafe { mem.ptr.as_ptr().add(byte_start) },
                        byte_start,
                        dtype: *dtype,
                        len: *len,
                    })
                }
                _ => Err(format!(
                    "view {} points into buffer {root}, which was freed; free views with their buffer \
                     or make a new view of a live buffer",
                    id.0
                )),
            },
        }
    }

    /// Live ids (buffers and views).
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

fn unknown(id: BufId) -> String {
    format!(
        "unknown buffer id {} (freed, never allocated, or from another backend)",
        id.0
    )
}
