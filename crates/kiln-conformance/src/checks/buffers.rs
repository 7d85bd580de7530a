//! Buffers and views: allocation, freeing, `buffer_info`, upload and
//! download of buffers and views, a view of a view, use after the parent is
//! freed, `host_region`, and `info` itself.

use kiln_abi::{op_names, AttentionShape, BackendBox, BackendInfo, BufId, DType, ROption};

use crate::case::{alloc, download, upload};
use crate::values::{encode, encode_u32};

pub type Check = fn(&mut BackendBox, &BackendInfo) -> Result<(), String>;

/// `(method, what is checked, check)`.
pub const CHECKS: &[(&str, &str, Check)] = &[
    (
        "info",
        "names the backend; lists only known ops, each with dtypes it has",
        info,
    ),
    (
        "alloc",
        "zero-filled buffers of every dtype, empty ones too",
        alloc_zeroed,
    ),
    ("alloc", "an impossible size is an error", alloc_huge),
    ("free", "double free and unknown ids are errors", free_twice),
    (
        "view",
        "bounds are checked; a view of a view is the same memory",
        views,
    ),
    (
        "buffer_info",
        "dtype, length, parent and offset",
        buffer_info,
    ),
    (
        "upload",
        "wrong byte counts are errors; a view receives exactly its elements",
        upload_sizes,
    ),
    (
        "download",
        "wrong byte counts are errors; freed buffers are errors",
        download_sizes,
    ),
    (
        "view",
        "use after the parent is freed is an error naming the parent",
        view_after_free,
    ),
    ("synchronize", "returns after queued work", synchronize),
    (
        "host_region",
        "host memory where info says so, none elsewhere",
        host_region,
    ),
    (
        "attention_workspace_len",
        "answers, the same every time",
        workspace_len,
    ),
];

fn ok<T>(r: kiln_abi::RResult<T, kiln_abi::RString>, what: &str) -> Result<T, String> {
    r.into_result().map_err(|e| format!("{what} failed: {e}"))
}

fn refused<T>(r: kiln_abi::RResult<T, kiln_abi::RString>, what: &str) -> Result<String, String> {
    match r.into_result() {
        Ok(_) => Err(format!("{what} was accepted; it must be an error")),
        Err(e) => Ok(e.into_string()),
    }
}

fn info(_be: &mut BackendBox, info: &BackendInfo) -> Result<(), String> {
    if info.name.is_empty() || info.device.is_empty() {
        return Err(format!("empty name or device: {info:?}"));
    }
    for dt in [DType::F32, DType::U32] {
        if !info.dtypes.contains(&dt) {
            return Err(format!(
                "dtypes {:?} lack {dt} (every model needs it)",
                info.dtypes
            ));
        }
    }
    let known: Vec<&str> = op_names().collect();
    for op in info.ops.iter() {
        if !known.contains(&op.name.as_str()) {
            return Err(format!(
                "lists `{}`, which is not an op of kiln_abi::op_names()",
                op.name
            ));
        }
        if op.dtypes.is_empty() {
            return Err(format!("lists `{}` with no dtype", op.name));
        }
        if let Some(d) = op.dtypes.iter().find(|d| !info.dtypes.contains(d)) {
            return Err(format!(
                "`{}` claims {d}, which the buffers do not support",
                op.name
            ));
        }
    }
    Ok(())
}

fn alloc_zeroed(be: &mut BackendBox, info: &BackendInfo) -> Result<(), String> {
    for &dt in info.dtypes.iter() {
        for len in [0, 1, 17] {
            let id = alloc(be, dt, len)?;
            let bytes = download(be, id, len * dt.size())?;
            ok(be.free(id), "free")?;
            if bytes.iter().any(|&b| b != 0) {
                return Err(format!("alloc({dt}, {len}) is not zero-filled"));
            }
        }
    }
    Ok(())
}

fn alloc_huge(be: &mut BackendBox, _: &BackendInfo) -> Result<(), String> {
    refused(be.alloc(DType::F32, usize::MAX), "alloc(f32, usize::MAX)")?;
    refused(
        be.alloc(DType::BF16, usize::MAX / 2 + 1),
        "alloc(bf16, usize::MAX / 2 + 1)",
    )?;
    Ok(())
}

fn free_twice(be: &mut BackendBox, _: &BackendInfo) -> Result<(), String> {
    let id = alloc(be, DType::F32, 4)?;
    ok(be.free(id), "free")?;
    refused(be.free(id), "a second free of one buffer")?;
    refused(be.free(BufId(0xDEAD_BEEF)), "free of a never-allocated id")?;
    Ok(())
}

fn views(be: &mut BackendBox, _: &BackendInfo) -> Result<(), String> {
    let parent = alloc(be, DType::F32, 10)?;
    upload(
        be,
        parent,
        &encode(DType::F32, &(0..10).map(f64::from).collect::<Vec<_>>()),
    )?;
    refused(be.view(parent, 8, 3), "view(parent of 10, offset 8, len 3)")?;
    refused(be.view(parent, usize::MAX, 2), "view at offset usize::MAX")?;
    refused(
        be.view(BufId(0xDEAD_BEEF), 0, 1),
        "view of a never-allocated id",
    )?;
    let outer = ok(be.view(parent, 2, 7), "view(parent, 2, 7)")?;
    refused(
        be.view(outer, 5, 3),
        "view(outer view of 7, offset 5, len 3)",
    )?;
    let inner = ok(be.view(outer, 3, 4), "view(outer, 3, 4)")?;
    let got = download(be, inner, 16)?;
    let want = encode(DType::F32, &[5.0, 6.0, 7.0, 8.0]);
    if got != want {
        return Err(format!(
            "a view at 3 of a view at 2 reads {:?}, want elements 5..9 of the parent",
            crate::values::decode(DType::F32, &got)
        ));
    }
    // Writing through the inner view lands in the parent.
    upload(be, inner, &encode(DType::F32, &[-1.0; 4]))?;
    let all = crate::values::decode(DType::F32, &download(be, parent, 40)?);
    let want: Vec<f64> = (0..10)
        .map(|i| if (5..9).contains(&i) { -1.0 } else { i as f64 })
        .collect();
    for id in [inner, outer, parent] {
        ok(be.free(id), "free")?;
    }
    if all != want {
        return Err(format!(
            "after writing the inner view the parent holds {all:?}, want {want:?}"
        ));
    }
    Ok(())
}

fn buffer_info(be: &mut BackendBox, _: &BackendInfo) -> Result<(), String> {
    let parent = alloc(be, DType::BF16, 12)?;
    let i = ok(be.buffer_info(parent), "buffer_info")?;
    if (i.dtype, i.len, i.parent, i.offset) != (DType::BF16, 12, ROption::RNone, 0) {
        return Err(format!("buffer_info of alloc(bf16, 12) is {i:?}"));
    }
    let v = ok(be.view(parent, 4, 5), "view")?;
    let i = ok(be.buffer_info(v), "buffer_info of a view")?;
    if (i.dtype, i.len, i.parent.into_option().is_some()) != (DType::BF16, 5, true) {
        return Err(format!("buffer_info of view(bf16 parent, 4, 5) is {i:?}"));
    }
    if i.parent == ROption::RSome(parent) && i.offset != 4 {
        return Err(format!(
            "a view at 4 of its parent reports offset {}",
            i.offset
        ));
    }
    let vv = ok(be.view(v, 1, 2), "view of a view")?;
    let i = ok(be.buffer_info(vv), "buffer_info of a view of a view")?;
    if (i.dtype, i.len) != (DType::BF16, 2) || i.parent.into_option().is_none() {
        return Err(format!("buffer_info of a view of a view is {i:?}"));
    }
    refused(
        be.buffer_info(BufId(0xDEAD_BEEF)),
        "buffer_info of a never-allocated id",
    )?;
    for id in [vv, v, parent] {
        ok(be.free(id), "free")?;
    }
    Ok(())
}

fn upload_sizes(be: &mut BackendBox, _: &BackendInfo) -> Result<(), String> {
    let buf = alloc(be, DType::F32, 6)?;
    refused(
        be.upload(buf, kiln_abi::RSlice::from_slice(&[0u8; 20])),
        "upload of 20 bytes into 6 f32",
    )?;
    refused(
        be.upload(buf, kiln_abi::RSlice::from_slice(&[0u8; 28])),
        "upload of 28 bytes into 6 f32",
    )?;
    let v = ok(be.view(buf, 1, 3), "view")?;
    refused(
        be.upload(v, kiln_abi::RSlice::from_slice(&[0u8; 24])),
        "upload of the parent's 24 bytes into a 3-element view",
    )?;
    upload(be, v, &encode(DType::F32, &[1.0, 2.0, 3.0]))?;
    let all = download(be, buf, 24)?;
    ok(be.free(v), "free")?;
    ok(be.free(buf), "free")?;
    if all != encode(DType::F32, &[0.0, 1.0, 2.0, 3.0, 0.0, 0.0]) {
        return Err(format!(
            "uploading [1, 2, 3] into view(buf, 1, 3) left the buffer at {:?}",
            crate::values::decode(DType::F32, &all)
        ));
    }
    let ids = alloc(be, DType::U32, 2)?;
    upload(be, ids, &encode_u32(&[7, u32::MAX]))?;
    let got = download(be, ids, 8)?;
    ok(be.free(ids), "free")?;
    if got != encode_u32(&[7, u32::MAX]) {
        return Err("u32 round trip changed the data".into());
    }
    Ok(())
}

fn download_sizes(be: &mut BackendBox, _: &BackendInfo) -> Result<(), String> {
    let buf = alloc(be, DType::F16, 5)?;
    let mut small = [0u8; 8];
    refused(
        be.download(buf, kiln_abi::RSliceMut::from_mut_slice(&mut small)),
        "download of 5 f16 into 8 bytes",
    )?;
    let mut big = [0u8; 12];
    refused(
        be.download(buf, kiln_abi::RSliceMut::from_mut_slice(&mut big)),
        "download of 5 f16 into 12 bytes",
    )?;
    ok(be.free(buf), "free")?;
    let mut exact = [0u8; 10];
    refused(
        be.download(buf, kiln_abi::RSliceMut::from_mut_slice(&mut exact)),
        "download of a freed buffer",
    )?;
    Ok(())
}

fn view_after_free(be: &mut BackendBox, _: &BackendInfo) -> Result<(), String> {
    let parent = alloc(be, DType::F32, 8)?;
    let v = ok(be.view(parent, 2, 4), "view")?;
    let vv = ok(be.view(v, 1, 2), "view of a view")?;
    ok(be.free(parent), "free of the parent")?;
    let number = parent.0.to_string();
    for (id, what) in [(v, "a view"), (vv, "a view of a view")] {
        let mut out = vec![0u8; if id == v { 16 } else { 8 }];
        let msgs = [
            refused(
                be.download(id, kiln_abi::RSliceMut::from_mut_slice(&mut out)),
                &format!("download of {what} of a freed buffer"),
            )?,
            refused(
                be.upload(id, kiln_abi::RSlice::from_slice(&out)),
                &format!("upload into {what} of a freed buffer"),
            )?,
            refused(be.zero(id), &format!("zero of {what} of a freed buffer"))?,
            refused(
                be.scale(id, 1, 2.0),
                &format!("scale of {what} of a freed buffer"),
            )?,
        ];
        if let Some(m) = msgs.iter().find(|m| !m.contains(&number)) {
            return Err(format!(
                "the error for {what} of freed buffer {parent:?} does not name it: \"{m}\""
            ));
        }
    }
    refused(be.view(v, 0, 1), "a view of a view whose parent is freed")?;
    let _ = be.free(vv);
    let _ = be.free(v);
    Ok(())
}

fn synchronize(be: &mut BackendBox, _: &BackendInfo) -> Result<(), String> {
    let a = alloc(be, DType::F32, 3)?;
    upload(be, a, &encode(DType::F32, &[1.0, 2.0, 3.0]))?;
    ok(be.scale(a, 3, 2.0), "scale")?;
    ok(be.synchronize(), "synchronize")?;
    let got = download(be, a, 12)?;
    ok(be.free(a), "free")?;
    if got != encode(DType::F32, &[2.0, 4.0, 6.0]) {
        return Err("queued work was not visible after synchronize".into());
    }
    Ok(())
}

fn host_region(be: &mut BackendBox, info: &BackendInfo) -> Result<(), String> {
    let buf = alloc(be, DType::F32, 6)?;
    let data = encode(DType::F32, &[1.0, -2.0, 3.5, 4.0, 5.0, 6.0]);
    upload(be, buf, &data)?;
    let v = ok(be.view(buf, 2, 3), "view")?;
    let whole = ok(be.host_region(buf), "host_region")?.into_option();
    let part = ok(be.host_region(v), "host_region of a view")?.into_option();
    let r = match (info.host_mapped, whole, part) {
        (false, None, None) => Ok(()),
        (false, ..) => Err("host_region returned memory, but info().host_mapped is false".into()),
        (true, Some(w), Some(p)) => {
            // SAFETY: the backend says these are host addresses of live
            // buffers, valid until the next op or free; we only read them.
            let (wb, pb) = unsafe {
                (
                    std::slice::from_raw_parts(w.ptr as *const u8, w.bytes).to_vec(),
                    std::slice::from_raw_parts(p.ptr as *const u8, p.bytes).to_vec(),
                )
            };
            if wb != data {
                Err(format!("host_region of a 6-element f32 buffer holds {} bytes that differ from its contents", w.bytes))
            } else if pb != data[8..20] {
                Err("host_region of view(buf, 2, 3) is not those 12 bytes".into())
            } else {
                Ok(())
            }
        }
        (true, ..) => Err("info().host_mapped is true, but host_region returned none".into()),
    };
    ok(be.free(v), "free")?;
    ok(be.free(buf), "free")?;
    r
}

fn workspace_len(be: &mut BackendBox, _: &BackendInfo) -> Result<(), String> {
    let s = AttentionShape {
        b: 2,
        t: 9,
        nh: 4,
        nkv: 2,
        hd: 8,
        window: 0,
    };
    let a = ok(be.attention_workspace_len(s), "attention_workspace_len")?;
    let b = ok(be.attention_workspace_len(s), "attention_workspace_len")?;
    if a != b {
        return Err(format!("two answers for one shape: {a} and {b}"));
    }
    Ok(())
}
