//! The device communicator on one rank: every collective of a world of one
//! leaves `recv` equal to `send` (sum, average, gather and broadcast of one
//! rank), `comm_wait` orders it, and a destroyed communicator is an error.
//! Multi-rank behaviour needs several processes: the parallelism crate's
//! tests run it.

use kiln_abi::{
    BackendBox, BackendInfo, CollectiveArgs, CollectiveKind, CommId, DType, RSlice, RVec,
};

use crate::case::{alloc, download, upload};
use crate::values::encode;

pub const METHODS: &[&str] = &[
    "comm_unique_id",
    "comm_init",
    "collective",
    "comm_wait",
    "comm_destroy",
];

/// Calls one comm method with harmless arguments (for unlisted-op probes).
pub fn probe(be: &mut BackendBox, method: &str) -> Result<(), String> {
    let r = match method {
        "comm_unique_id" => be.comm_unique_id().into_result().map(|_| ()),
        "comm_init" => be
            .comm_init(RSlice::from_slice(&[0u8; 8]), 0, 1)
            .into_result()
            .map(|_| ()),
        "collective" => be
            .collective(args(
                CommId(0),
                CollectiveKind::AllReduceSum,
                kiln_abi::BufId(0),
                kiln_abi::BufId(0),
                1,
            ))
            .into_result(),
        "comm_wait" => be.comm_wait(CommId(0)).into_result(),
        _ => be.comm_destroy(CommId(0)).into_result(),
    };
    r.map_err(|e| e.into_string())
}

fn args(
    comm: CommId,
    kind: CollectiveKind,
    send: kiln_abi::BufId,
    recv: kiln_abi::BufId,
    count: usize,
) -> CollectiveArgs {
    CollectiveArgs {
        comm,
        kind,
        send,
        recv,
        count,
        peer: 0,
        send_counts: RVec::new(),
        recv_counts: RVec::new(),
    }
}

/// One rank: every collective is the identity, then the communicator ends.
pub fn world_of_one(be: &mut BackendBox, info: &BackendInfo) -> Result<(), String> {
    if !info.collectives {
        return Err("info() lists communicator ops but says collectives = false".into());
    }
    let id = be
        .comm_unique_id()
        .into_result()
        .map_err(|e| format!("comm_unique_id failed: {e}"))?;
    let comm = be
        .comm_init(RSlice::from_slice(&id), 0, 1)
        .into_result()
        .map_err(|e| format!("comm_init(rank 0 of 1) failed: {e}"))?;
    let n = 11;
    let data: Vec<f64> = (0..n).map(|i| i as f64 * 0.5 - 2.0).collect();
    let send = alloc(be, DType::F32, n)?;
    upload(be, send, &encode(DType::F32, &data))?;
    for kind in [
        CollectiveKind::AllReduceSum,
        CollectiveKind::AllReduceAvg,
        CollectiveKind::ReduceScatterSum,
        CollectiveKind::AllGather,
        CollectiveKind::Broadcast,
    ] {
        let recv = alloc(be, DType::F32, n)?;
        be.collective(args(comm, kind, send, recv, n))
            .into_result()
            .map_err(|e| format!("{kind:?} on one rank failed: {e}"))?;
        be.comm_wait(comm)
            .into_result()
            .map_err(|e| format!("comm_wait failed: {e}"))?;
        let got = download(be, recv, n * 4)?;
        let _ = be.free(recv);
        if got != encode(DType::F32, &data) {
            return Err(format!("{kind:?} on one rank did not copy send to recv"));
        }
    }
    be.comm_destroy(comm)
        .into_result()
        .map_err(|e| format!("comm_destroy failed: {e}"))?;
    let recv = alloc(be, DType::F32, n)?;
    let after = be
        .collective(args(comm, CollectiveKind::AllReduceSum, send, recv, n))
        .into_result();
    let _ = be.free(recv);
    let _ = be.free(send);
    match after {
        Ok(()) => Err("a collective on a destroyed communicator was accepted".into()),
        Err(_) => Ok(()),
    }
}
