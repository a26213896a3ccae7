//! Spare table memory: a replaced table's buffer serves the next table of its length that
//! is overwritten whole, never a table that must start zeroed. One test in its own binary:
//! the spare memory is process-wide.

use dlrs_model::RowFormat;
use dlrs_model::tables::{
    EmbeddingTable, keep_spare_table_memory, reserve_spare_table_memory, spare_table_memory,
};

#[test]
fn spare_memory_is_reused_for_overwrites_only_and_bounded() {
    let (rows, dim) = (300_000, 4); // 4.8 MB: large enough for a 2 MiB aligned buffer
    let len = rows * dim * 4;
    assert_eq!(spare_table_memory(), 0, "nothing kept by default");
    // by default a dropped table is freed
    drop(EmbeddingTable::for_overwrite(rows, dim, RowFormat::F32).unwrap());
    assert_eq!(spare_table_memory(), 0);

    // room for a second copy of a table of this size (its own memory is not kept: the
    // table is still alive; a mapped table would need none)
    reserve_spare_table_memory(&[EmbeddingTable::zeroed(rows, dim, RowFormat::F32).unwrap()])
        .unwrap();
    let kept = spare_table_memory();
    assert!(kept >= len, "{kept}");

    // a zeroed table never takes spare memory
    let z = EmbeddingTable::zeroed(rows, dim, RowFormat::F32).unwrap();
    assert!(z.bytes().iter().all(|&b| b == 0));
    assert_eq!(spare_table_memory(), kept);

    // a table of another length does not either
    let other = EmbeddingTable::for_overwrite(rows + 1, dim, RowFormat::F32).unwrap();
    assert_eq!(spare_table_memory(), kept);

    // one of this length takes it, whatever it holds
    let mut t = EmbeddingTable::for_overwrite(rows, dim, RowFormat::F32).unwrap();
    assert_eq!(spare_table_memory(), 0);
    assert_eq!(t.bytes().len(), len);
    let at = t.bytes().as_ptr();
    t.bytes_mut().fill(7);
    drop(t);
    assert_eq!(spare_table_memory(), kept, "back when dropped");
    let t2 = EmbeddingTable::for_overwrite(rows, dim, RowFormat::F32).unwrap();
    assert_eq!(t2.bytes().as_ptr(), at, "the same memory again");
    assert!(t2.bytes().iter().all(|&b| b == 7), "reused as it was left");

    // the limit holds: with t2's buffer back, the zeroed table's does not fit beside it
    drop(t2);
    drop(z);
    drop(other);
    assert_eq!(spare_table_memory(), kept);

    // 0 frees what is kept
    keep_spare_table_memory(0);
    assert_eq!(spare_table_memory(), 0);
    drop(EmbeddingTable::for_overwrite(rows, dim, RowFormat::F32).unwrap());
    assert_eq!(spare_table_memory(), 0);
}
