use super::*;
use kiln_data::shard::write_shard;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn opts(b: usize, t: usize, shuffle: bool) -> LoaderOptions {
    LoaderOptions {
        batch_size: b,
        seq_len: t,
        seed: 7,
        shuffle,
        rank: 0,
        world: 1,
    }
}

/// A shard whose tokens are `start, start+1, ...` so every window is
/// recognisable by its first token.
fn counting_shard(dir: &Path, name: &str, start: u32, n: u32) -> PathBuf {
    let p = dir.join(name);
    write_shard(&p, &(start..start + n).collect::<Vec<_>>()).unwrap();
    p
}

#[test]
fn sequential_windows_and_shifted_targets() {
    let dir = tempfile::tempdir().unwrap();
    let p = counting_shard(dir.path(), "a.bin", 0, 25); // windows of T=4: (25-1)/4 = 6
    let mut dl = DataLoader::open(&p, opts(2, 4, false)).unwrap();
    assert_eq!(dl.source().num_windows(), 6);
    let b = dl.next_batch().unwrap();
    assert_eq!(b.tokens, vec![0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(b.targets, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    dl.next_batch().unwrap();
    let b = dl.next_batch().unwrap();
    assert_eq!(b.tokens, vec![16, 17, 18, 19, 20, 21, 22, 23]);
    assert_eq!(b.targets, vec![17, 18, 19, 20, 21, 22, 23, 24]);
    // Next epoch starts over.
    assert_eq!(dl.next_batch().unwrap().tokens[0], 0);
}

#[test]
fn directory_shards_are_read_in_name_order_u16_and_u32() {
    let dir = tempfile::tempdir().unwrap();
    counting_shard(dir.path(), "b.bin", 100_000, 9); // u32 shard (version 2)
    counting_shard(dir.path(), "a.bin", 0, 9);
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let mut dl = DataLoader::open(dir.path(), opts(1, 4, false)).unwrap();
    let firsts: Vec<u32> = (0..4).map(|_| dl.next_batch().unwrap().tokens[0]).collect();
    assert_eq!(firsts, vec![0, 4, 100_000, 100_004]);
}

#[test]
fn every_epoch_visits_every_window_once_in_a_new_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = counting_shard(dir.path(), "a.bin", 0, 1001); // 100 windows of T=10
    let mut dl = DataLoader::open(&p, opts(5, 10, true)).unwrap();
    let mut epochs: Vec<Vec<u32>> = Vec::new();
    for _ in 0..2 {
        let mut firsts = Vec::new();
        for _ in 0..20 {
            let b = dl.next_batch().unwrap();
            for w in b.tokens.chunks(10) {
                // windows are intact, aligned runs
                assert_eq!(w[0] % 10, 0);
                assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
                firsts.push(w[0]);
            }
        }
        let mut sorted = firsts.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).map(|i| i * 10).collect::<Vec<_>>());
        epochs.push(firsts);
    }
    assert_ne!(epochs[0], epochs[1], "each epoch is reshuffled");
    assert_ne!(
        epochs[0],
        (0..100).map(|i| i * 10).collect::<Vec<_>>(),
        "shuffled"
    );
}

#[test]
fn same_seed_same_order_other_seed_other_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = counting_shard(dir.path(), "a.bin", 0, 641);
    let take = |seed| {
        let mut o = opts(4, 8, true);
        o.seed = seed;
        let mut dl = DataLoader::open(&p, o).unwrap();
        (0..10)
            .map(|_| dl.next_batch().unwrap().tokens)
            .collect::<Vec<_>>()
    };
    assert_eq!(take(1), take(1));
    assert_ne!(take(1), take(2));
}

#[test]
fn ranks_split_the_single_rank_stream() {
    let dir = tempfile::tempdir().unwrap();
    let p = counting_shard(dir.path(), "a.bin", 0, 801);
    let mut single = DataLoader::open(&p, opts(3, 8, true)).unwrap();
    let serial: Vec<Batch> = (0..12).map(|_| single.next_batch().unwrap()).collect();
    let mut ranks: Vec<DataLoader> = (0..3)
        .map(|r| {
            let mut o = opts(3, 8, true);
            o.rank = r;
            o.world = 3;
            DataLoader::open(&p, o).unwrap()
        })
        .collect();
    for (g, want) in serial.iter().enumerate() {
        assert_eq!(
            &ranks[g % 3].next_batch().unwrap(),
            want,
            "global batch {g}"
        );
    }
}

#[test]
fn small_shard_error_names_file_sizes_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let p = counting_shard(dir.path(), "tiny.bin", 0, 50);
    let msg = DataLoader::open(&p, opts(1, 64, true))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("tiny.bin"), "{msg}");
    assert!(msg.contains("50 tokens") && msg.contains("65"), "{msg}");
    assert!(msg.contains("--seq-len (at most 49)"), "{msg}");
}

#[test]
fn truncated_and_missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = counting_shard(dir.path(), "a.bin", 0, 100);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
    let msg = DataLoader::open(&p, opts(1, 8, true))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("a.bin") && msg.contains("truncated"), "{msg}");
    let missing = dir.path().join("nope.bin");
    let msg = DataLoader::open(&missing, opts(1, 8, true))
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("nope.bin") && msg.contains("cannot open"),
        "{msg}"
    );
    let empty = tempfile::tempdir().unwrap();
    let msg = DataLoader::open(empty.path(), opts(1, 8, true))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("no *.bin"), "{msg}");
}

#[test]
fn seek_refuses_other_data_or_options() {
    let dir = tempfile::tempdir().unwrap();
    let p = counting_shard(dir.path(), "a.bin", 0, 401);
    let q = counting_shard(dir.path(), "b.bin", 0, 801);
    let mut dl = DataLoader::open(&p, opts(2, 8, true)).unwrap();
    dl.next_batch().unwrap();
    let pos = dl.position();
    let mut other_data = DataLoader::open(&q, opts(2, 8, true)).unwrap();
    assert!(other_data.seek(&pos).is_err());
    let mut other_batch = DataLoader::open(&p, opts(3, 8, true)).unwrap();
    assert!(other_batch.seek(&pos).is_err());
}

#[test]
fn max_token_scans_all_shards() {
    let dir = tempfile::tempdir().unwrap();
    counting_shard(dir.path(), "a.bin", 0, 30);
    counting_shard(dir.path(), "b.bin", 70_000, 30);
    let src = TokenSource::open(dir.path(), 4).unwrap();
    assert_eq!(src.max_token().unwrap(), Some(70_029));
    assert_eq!(src.num_tokens(), 60);
}

proptest! {
    /// A loader restored from any position (through its serialised form)
    /// returns exactly the batches the original returns next.
    #[test]
    fn resume_from_any_position_is_exact(
        n in 40u32..400, t in 1usize..12, b in 1usize..5, world in 1usize..4,
        rank_pick in 0usize..4, taken in 0u64..60, seed in any::<u64>(),
    ) {
        prop_assume!(n as usize > t);
        let dir = tempfile::tempdir().unwrap();
        let p = counting_shard(dir.path(), "a.bin", 0, n);
        let o = LoaderOptions { batch_size: b, seq_len: t, seed, shuffle: true,
                                rank: rank_pick % world, world };
        let mut a = DataLoader::open(&p, o).unwrap();
        for _ in 0..taken { a.next_batch().unwrap(); }
        let json = serde_json::to_string(&a.position()).unwrap();
        let pos: LoaderPosition = serde_json::from_str(&json).unwrap();
        let mut r = DataLoader::open(&p, o).unwrap();
        r.seek(&pos).unwrap();
        for _ in 0..3 {
            prop_assert_eq!(a.next_batch().unwrap(), r.next_batch().unwrap());
        }
    }

    #[test]
    fn permutation_is_a_permutation(n in 0u32..500, seed in any::<u64>(), epoch in 0u64..5) {
        let mut p = permutation(n, seed, epoch);
        p.sort();
        prop_assert_eq!(p, (0..n).collect::<Vec<_>>());
    }
}

#[test]
fn windows_are_uniformly_spread_over_positions() {
    // A cheap sanity check of the shuffle: over many epochs, window 0 lands
    // in each slot of a 4-window epoch about equally often.
    let mut counts = BTreeMap::new();
    for epoch in 0..4000 {
        let p = permutation(4, 3, epoch);
        let slot = p.iter().position(|&w| w == 0).unwrap();
        *counts.entry(slot).or_insert(0) += 1;
    }
    for (_, c) in counts {
        assert!((850..1150).contains(&c), "{c}");
    }
}
