//! Background conversion of a shard's row store into a columnar segment (DESIGN.md §4: the
//! delta moves into main). A conversion never changes what a reader sees, only where a row
//! lives.
//!
//! 1. [`RowStore::begin_conversion`] reads the first [`SEGMENT_ROWS`] live rows of the shard's
//!    sled tree, in key order, and writes them as a segment file (sorted, LZ4, fsynced),
//!    keeping the values it read. Commits go on meanwhile.
//! 2. [`RowStore::finish_conversion`], under the shard's lock (exclusive: no scan of the shard
//!    is running, see [`RowStore::read_shard`]) and the registration lock (exclusive: no commit
//!    is applying), compares each key's current value with the one it read:
//!    - unchanged: the row store's entry goes; the segment holds the row now. A key an older
//!      segment of the shard also holds gets a tombstone that hides the older copies but not
//!      the new segment's (`tombstone(seq - 1)`).
//!    - a newer version: kept; a row-store version shadows every segment's copy.
//!    - deleted since: a tombstone covering the new segment too (`tombstone(seq)`), written
//!      *before* the segment is known, so a point read never sees the deleted row.
//!
//!    The segment joins the shard's list, then the removals and the segment's record are
//!    applied as one chunked commit (`apply_chunked`: an undo record first, so a crash
//!    restores the row store's entries and the unregistered file is removed at open).
//!
//! Which shards are due ([`RowStore::due_for_conversion`]): a shard whose row store holds
//! [`ConversionPolicy::rows`] live rows (an estimate kept from commits, counted exactly
//! before deciding), or whose oldest write not yet converted is older than
//! [`ConversionPolicy::age`].

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::BinaryArray;
use orochi_common::error::{DbError, DbResult, SqlState};
use orochi_common::schema::{ShardIndex, TableId};

use super::{Change, RowStore, TableEntry, segment_key};
use crate::load::ShardBuffer;
use crate::segment::{self, Segment};

/// The most rows one conversion moves into one segment: its last step holds the shard and
/// the registration lock (commits wait) for about as long as sled takes to remove them.
pub const SEGMENT_ROWS: usize = 65_536;

/// The most row-store bytes one conversion reads (values are kept until its last step).
pub const SEGMENT_BYTES: u64 = 32 << 20;

/// How long the last step waits for the scans of a shard to end before it gives up (the
/// file is removed; the next check tries again).
const SHARD_WAIT: Duration = Duration::from_secs(5);

/// When a shard's row store is converted into a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConversionPolicy {
    /// Live rows in a shard's row store that make it due (0: never for size).
    pub rows: u64,
    /// Age of the oldest write not yet converted that makes a shard due (`None`: never for
    /// age).
    pub age: Option<Duration>,
    /// How often shards are checked (`None`: no background conversion).
    pub check_every: Option<Duration>,
}

impl Default for ConversionPolicy {
    /// 100,000 rows per shard, or a day (`orochi.hot_tier_age`'s default); checked every 10 s.
    fn default() -> Self {
        ConversionPolicy {
            rows: 100_000,
            age: Some(Duration::from_secs(86_400)),
            check_every: Some(Duration::from_secs(10)),
        }
    }
}

impl ConversionPolicy {
    /// From a daemon's configuration: `conversion_rows` (0: never by size),
    /// `hot_tier_age_secs` (0: never by age), `conversion_check_ms` (0: no background
    /// conversion); unset ones keep their default.
    pub fn configured(rows: Option<u64>, age_secs: Option<u64>, check_ms: Option<u64>) -> Self {
        let d = ConversionPolicy::default();
        ConversionPolicy {
            rows: rows.unwrap_or(d.rows),
            age: age_secs.map_or(d.age, |s| (s > 0).then(|| Duration::from_secs(s))),
            check_every: check_ms.map_or(d.check_every, |ms| {
                (ms > 0).then(|| Duration::from_millis(ms))
            }),
        }
    }
}

/// What a shard's row store holds that no conversion has moved yet.
#[derive(Debug, Default)]
pub(crate) struct Delta {
    /// Live rows: counted, then moved by the inserts and deletes commits apply (a delete
    /// of a segment's row counts too, so it may run low; it is counted again before it
    /// decides anything).
    live: i64,
    counted: bool,
    /// When the oldest write not yet converted was applied.
    since: Option<Instant>,
    /// Commits noted so far: a count that raced with one is not trusted.
    writes: u64,
}

/// A conversion between its two steps: the segment file written, not registered.
pub struct PendingConversion {
    entry: Arc<TableEntry>,
    seg: Segment,
    /// The keys and values it read, in key order.
    read: Vec<(sled::IVec, sled::IVec)>,
}

impl PendingConversion {
    pub fn rows(&self) -> usize {
        self.read.len()
    }

    fn abandon(self) -> u64 {
        let _ = std::fs::remove_file(&self.seg.path);
        0
    }
}

fn io(e: sled::Error) -> DbError {
    DbError::new(SqlState::IoError, format!("row store read: {e}"))
}

impl RowStore {
    /// The lock a scan of a shard holds shared, so that it reads the shard before or after a
    /// conversion's last step, never across it. Waits (blocking) while that step runs.
    pub fn read_shard(
        &self,
        table: TableId,
        shard: ShardIndex,
    ) -> tokio::sync::OwnedRwLockReadGuard<()> {
        let lock = self.shard_lock(table, shard);
        loop {
            if let Ok(g) = lock.clone().try_read_owned() {
                return g;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn shard_lock(&self, table: TableId, shard: ShardIndex) -> super::ShardLock {
        self.shard_locks
            .lock()
            .entry((table, shard))
            .or_default()
            .clone()
    }

    /// Shards whose row store had rows when the store opened: due by age from now on.
    pub(super) fn note_stored_rows(&self) {
        let now = Instant::now();
        let tables = self.tables.read();
        let mut deltas = self.deltas.lock();
        for entry in tables.values() {
            for (i, tree) in entry.shards.iter().enumerate() {
                if !tree.is_empty() {
                    deltas.insert(
                        (entry.def.id, i as ShardIndex),
                        Delta {
                            since: Some(now),
                            ..Delta::default()
                        },
                    );
                }
            }
        }
    }

    /// Records what a commit applies to the row store.
    pub(super) fn note_writes(&self, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut deltas = self.deltas.lock();
        for c in changes {
            let d = deltas.entry((c.table, c.shard)).or_default();
            match (&c.value, c.insert) {
                (None, _) => d.live -= 1,
                (Some(_), true) => d.live += 1,
                (Some(_), false) => {}
            }
            d.since.get_or_insert(now);
            d.writes += 1;
        }
    }

    /// Live rows in a shard's row store, counting up to `cap`.
    fn count_live(&self, entry: &TableEntry, shard: ShardIndex, cap: u64) -> DbResult<u64> {
        let mut n = 0;
        for item in entry.tree(shard)?.iter() {
            let (_, v) = item.map_err(io)?;
            if segment::tombstone_of(&v).is_none() {
                n += 1;
                if n >= cap {
                    break;
                }
            }
        }
        Ok(n)
    }

    /// The shards due for conversion under `policy`.
    pub fn due_for_conversion(
        &self,
        policy: &ConversionPolicy,
    ) -> DbResult<Vec<(TableId, ShardIndex)>> {
        let rows = if policy.rows == 0 {
            u64::MAX
        } else {
            policy.rows
        };
        let looks_due: Vec<((TableId, ShardIndex), bool, u64)> = {
            let mut deltas = self.deltas.lock();
            // forget the shards of dropped tables
            let tables = self.tables.read();
            deltas.retain(|k, _| tables.contains_key(&k.0));
            deltas
                .iter()
                .filter_map(|(k, d)| {
                    let aged = match (policy.age, d.since) {
                        (Some(age), Some(since)) => since.elapsed() >= age,
                        _ => false,
                    };
                    let large = !d.counted || d.live >= rows as i64;
                    (aged || large).then_some((*k, aged, d.writes))
                })
                .collect()
        };
        let mut due = Vec::new();
        for ((table, shard), aged, writes) in looks_due {
            let Ok(entry) = self.table(table) else {
                continue;
            };
            let live = self.count_live(&entry, shard, rows)?;
            let mut deltas = self.deltas.lock();
            let Some(d) = deltas.get_mut(&(table, shard)) else {
                continue;
            };
            if d.writes != writes {
                continue; // a commit landed while counting: count again next time
            }
            d.live = live as i64;
            d.counted = true;
            if live == 0 {
                d.since = None; // tombstones only: nothing to convert
            } else if live >= rows || aged {
                due.push((table, shard));
            }
        }
        Ok(due)
    }

    /// Converts the due shards, each until its row store holds no live row it read (or
    /// `stop` is set); returns the rows moved.
    pub fn convert_due(&self, policy: &ConversionPolicy, stop: &AtomicBool) -> DbResult<u64> {
        let mut moved = 0;
        let due = self.due_for_conversion(policy)?;
        if !due.is_empty() {
            tracing::debug!(shards = due.len(), "row stores due for conversion");
        }
        for (table, shard) in due {
            loop {
                if stop.load(Ordering::Acquire) {
                    return Ok(moved);
                }
                let Some(pending) = self.begin_conversion(table, shard)? else {
                    break;
                };
                let full = pending.rows() >= SEGMENT_ROWS;
                let n = self.finish_conversion(pending)?;
                moved += n;
                if !full || n == 0 {
                    break;
                }
            }
            let Ok(entry) = self.table(table) else {
                continue;
            };
            let left = self.count_live(&entry, shard, 1)?;
            let mut deltas = self.deltas.lock();
            if let Some(d) = deltas.get_mut(&(table, shard)) {
                d.counted = false;
                // what commits wrote meanwhile waits a full age again
                d.since = (left > 0).then(Instant::now);
            }
        }
        Ok(moved)
    }

    /// Step 1: the shard's first live rows written as a segment file (not registered);
    /// `None` if its row store has none.
    pub fn begin_conversion(
        &self,
        table: TableId,
        shard: ShardIndex,
    ) -> DbResult<Option<PendingConversion>> {
        let entry = self.table(table)?;
        let mut buffer = ShardBuffer::new(&entry, shard);
        let mut read = Vec::new();
        let mut bytes = 0u64;
        for item in entry.tree(shard)?.iter() {
            let (k, v) = item.map_err(io)?;
            if segment::tombstone_of(&v).is_some() {
                continue;
            }
            let row = entry.decode_row(&v)?;
            buffer.push(&k, &row)?;
            bytes += (k.len() + v.len()) as u64;
            read.push((k, v));
            if read.len() >= SEGMENT_ROWS || bytes >= SEGMENT_BYTES {
                break;
            }
        }
        if read.is_empty() {
            return Ok(None);
        }
        let id = self.new_segment_id()?;
        let seg = Segment::at(
            &self.segment_dir,
            buffer.write(&self.segment_dir, id)?.seg.meta.clone(),
        );
        Ok(Some(PendingConversion { entry, seg, read }))
    }

    /// Step 2: the segment registered and the rows it took over removed from the row store;
    /// returns how many (0: abandoned — the table changed, or the shard's scans did not end
    /// within [`SHARD_WAIT`]).
    pub fn finish_conversion(&self, p: PendingConversion) -> DbResult<u64> {
        self.finish_conversion_with(p, usize::MAX)
    }

    /// `stop_after`: chunks of the removal applied before returning (a simulated crash, for
    /// tests; see `apply_chunked`).
    pub(crate) fn finish_conversion_with(
        &self,
        p: PendingConversion,
        stop_after: usize,
    ) -> DbResult<u64> {
        let (table, shard) = (p.seg.meta.table, p.seg.meta.shard);
        let lock = self.shard_lock(table, shard);
        let deadline = Instant::now() + SHARD_WAIT;
        let _scans_out = loop {
            if let Ok(g) = lock.try_write() {
                break g;
            }
            if Instant::now() >= deadline {
                tracing::debug!(
                    table,
                    shard,
                    "conversion put off: the shard is being scanned"
                );
                return Ok(p.abandon());
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let _commits_out = self.registration.write();
        // the same definition (not altered, dropped or recreated since step 1)
        match self.table(table) {
            Ok(now) if Arc::ptr_eq(&now, &p.entry) => {}
            _ => return Ok(p.abandon()),
        }
        let tree = p.entry.tree(shard)?.clone();
        // the keys older segments of the shard hold too
        let keys = BinaryArray::from_iter_values(p.read.iter().map(|(k, _)| k.as_ref()));
        let keys = [keys];
        let mut in_older: HashSet<Vec<u8>> = HashSet::new();
        for old in self
            .segments(table, shard)
            .iter()
            .filter(|s| s.overlaps(&p.seg))
        {
            segment::find_common(&keys, &old.keys()?, |k| {
                in_older.insert(k.to_vec());
                Ok(false)
            })?;
        }
        let seq = self.new_segment_id()?;
        let change = |key: &[u8], value: Option<Vec<u8>>| Change {
            table,
            shard,
            key: key.to_vec(),
            value,
            insert: false,
        };
        let mut deleted = Vec::new();
        let mut moved = Vec::new();
        for (k, v) in &p.read {
            match tree.get(k).map_err(io)? {
                Some(now) if now == *v => moved.push(change(
                    k,
                    in_older
                        .contains(k.as_ref())
                        .then(|| segment::tombstone(seq - 1)),
                )),
                // a newer version shadows the segment's copy
                Some(now) if segment::tombstone_of(&now).is_none() => {}
                // deleted since: hide the segment's copy too
                _ => deleted.push(change(k, Some(segment::tombstone(seq)))),
            }
        }
        if moved.is_empty() {
            return Ok(p.abandon());
        }
        // tombstones for what was deleted since first: harmless before the segment exists
        // (they hide only segments up to it), needed once it does
        if !deleted.is_empty() {
            self.apply_per_tree(&deleted)?;
        }
        segment::sync_dir(&self.segment_dir)?;
        let mut meta = p.seg.meta.clone();
        meta.seq = seq;
        let seg = Arc::new(Segment {
            meta,
            path: p.seg.path.clone(),
        });
        let record = (
            segment_key(table, shard, seg.id()),
            serde_json::to_vec(&seg.meta).expect("segment metas serialize"),
        );
        // the segment is known before its rows leave the row store: a point read finds
        // each row in one or the other
        {
            let mut map = self.segments.write();
            let mut list: Vec<Arc<Segment>> = map
                .get(&(table, shard))
                .map(|l| l.to_vec())
                .unwrap_or_default();
            list.push(seg.clone());
            map.insert((table, shard), list.into());
            self.newest.fetch_max(seq, Ordering::AcqRel);
        }
        if let Err(e) = self.apply_chunked(&moved, stop_after, &[record]) {
            // put the row store back as it was (the undo record), then forget the segment;
            // a store that cannot do that is not safe to keep serving
            tracing::error!(table, shard, error = %e.message, "conversion into a segment failed");
            if let Err(undo) = self.roll_back_interrupted_commits() {
                tracing::error!(error = %undo, "could not undo a failed conversion; stopping");
                std::process::abort();
            }
            let mut map = self.segments.write();
            if let Some(list) = map.get(&(table, shard)) {
                let list: Vec<Arc<Segment>> = list
                    .iter()
                    .filter(|s| s.id() != seg.id())
                    .cloned()
                    .collect();
                map.insert((table, shard), list.into());
            }
            let _ = std::fs::remove_file(&seg.path);
            return Err(e);
        }
        tracing::debug!(
            table,
            shard,
            rows = moved.len(),
            segment = seg.id(),
            "row store converted"
        );
        Ok(moved.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use orochi_common::datum::Datum;

    use super::*;
    use crate::store::tests::table;

    fn row_change(entry: &TableEntry, k: i64, v: Option<i64>, insert: bool) -> Change {
        let row = vec![Datum::Int8(k), Datum::Int8(v.unwrap_or(0))];
        Change {
            table: entry.def.id,
            shard: entry.def.shard_of_row(&row),
            key: entry.def.encode_key(&row),
            value: v.map(|_| entry.encode_row(&row)),
            insert,
        }
    }

    /// Every committed row of keys `0..n`, read by key (row store, then segments).
    fn by_key(store: &RowStore, n: i64) -> Vec<(i64, i64)> {
        let entry = store.table(16384).unwrap();
        (0..n)
            .filter_map(|k| {
                let c = row_change(&entry, k, Some(0), false);
                store
                    .get(&entry, c.shard, &c.key)
                    .unwrap()
                    .map(|r| match (&r[0], &r[1]) {
                        (Datum::Int8(k), Datum::Int8(v)) => (*k, *v),
                        other => panic!("unexpected row {other:?}"),
                    })
            })
            .collect()
    }

    fn live_in_row_store(store: &RowStore, shard: ShardIndex) -> u64 {
        let entry = store.table(16384).unwrap();
        store.count_live(&entry, shard, u64::MAX).unwrap()
    }

    fn keys_in(entry: &TableEntry, shard: ShardIndex, n: i64) -> Vec<i64> {
        (0..n)
            .filter(|&k| row_change(entry, k, Some(0), false).shard == shard)
            .collect()
    }

    /// A conversion moves the rows it read into a segment, and what commits changed between
    /// its two steps stays as they left it: an updated row keeps its new version, a deleted
    /// one stays deleted, a new one stays in the row store. Converting again moves the
    /// updated row into a second segment, where it hides its first copy. All of it survives
    /// a restart.
    #[test]
    fn conversion_moves_rows_and_keeps_what_changed_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let n = 1_000;
        let mut model: Vec<(i64, i64)> = (0..n).map(|k| (k, k)).collect();
        {
            let store = RowStore::open(dir.path(), 8 << 20).unwrap();
            store.create_table(&table()).unwrap();
            let entry = store.table(16384).unwrap();
            let rows: Vec<Change> = (0..n)
                .map(|k| row_change(&entry, k, Some(k), true))
                .collect();
            store.apply(&rows).unwrap();
            let mine = keys_in(&entry, 0, n);
            let (updated, deleted) = (mine[0], mine[1]);

            let pending = store.begin_conversion(16384, 0).unwrap().unwrap();
            assert_eq!(pending.rows(), mine.len());
            // commits between the two steps
            store
                .apply(&[
                    row_change(&entry, updated, Some(-1), false),
                    row_change(&entry, deleted, None, false),
                ])
                .unwrap();
            let added = (n..)
                .find(|&k| row_change(&entry, k, Some(0), false).shard == 0)
                .unwrap();
            store
                .apply(&[row_change(&entry, added, Some(7), true)])
                .unwrap();
            model[updated as usize].1 = -1;
            model.retain(|&(k, _)| k != deleted);
            model.push((added, 7));
            model.sort();

            let moved = store.finish_conversion(pending).unwrap();
            assert_eq!(moved as usize, mine.len() - 2);
            assert_eq!(store.segments(16384, 0).len(), 1);
            assert_eq!(
                live_in_row_store(&store, 0),
                2,
                "the new version and the new row"
            );
            assert_eq!(by_key(&store, n + 100), model);

            // again: the updated row and the new one move; the update's first copy is hidden
            let pending = store.begin_conversion(16384, 0).unwrap().unwrap();
            assert_eq!(pending.rows(), 2);
            assert_eq!(store.finish_conversion(pending).unwrap(), 2);
            assert_eq!(store.segments(16384, 0).len(), 2);
            assert_eq!(live_in_row_store(&store, 0), 0);
            assert_eq!(by_key(&store, n + 100), model);
            // a later delete of a converted row hides it in every segment
            store
                .apply(&[row_change(&entry, updated, None, false)])
                .unwrap();
            model.retain(|&(k, _)| k != updated);
            assert_eq!(by_key(&store, n + 100), model);
            store.flush().unwrap();
        }
        let store = RowStore::open(dir.path(), 8 << 20).unwrap();
        assert_eq!(store.segments(16384, 0).len(), 2);
        assert_eq!(by_key(&store, n + 100), model);
    }

    /// The background policy: shards over the row threshold are due (counted exactly), the
    /// others are not until their oldest write is older than the age; converting every due
    /// shard leaves no live row in the row stores and every row readable.
    #[test]
    fn due_shards_are_converted_by_size_and_by_age() {
        let dir = tempfile::tempdir().unwrap();
        let store = RowStore::open(dir.path(), 8 << 20).unwrap();
        store.create_table(&table()).unwrap();
        let entry = store.table(16384).unwrap();
        let n = 400;
        let rows: Vec<Change> = (0..n)
            .map(|k| row_change(&entry, k, Some(k), true))
            .collect();
        store.apply(&rows).unwrap();
        let largest = (0..4u32)
            .max_by_key(|&s| keys_in(&entry, s, n).len())
            .unwrap();
        let threshold = keys_in(&entry, largest, n).len() as u64;
        let by_size = ConversionPolicy {
            rows: threshold,
            age: None,
            check_every: None,
        };
        let due = store.due_for_conversion(&by_size).unwrap();
        assert!(due.contains(&(16384, largest)), "{due:?}");
        assert!(due.len() < 4, "only shards with {threshold} rows: {due:?}");
        let stop = AtomicBool::new(false);
        assert_eq!(
            store.convert_due(&by_size, &stop).unwrap() as usize,
            due.len() * threshold as usize
        );
        assert_eq!(live_in_row_store(&store, largest), 0);

        let by_age = ConversionPolicy {
            rows: 0,
            age: Some(Duration::from_millis(1)),
            check_every: None,
        };
        std::thread::sleep(Duration::from_millis(5));
        store.convert_due(&by_age, &stop).unwrap();
        for s in 0..4 {
            assert_eq!(live_in_row_store(&store, s), 0, "shard {s}");
        }
        assert!(store.due_for_conversion(&by_age).unwrap().is_empty());
        let want: Vec<(i64, i64)> = (0..n).map(|k| (k, k)).collect();
        assert_eq!(by_key(&store, n), want);
    }

    /// A crash in the middle of a conversion's last step (some of its removals applied):
    /// at the next open the row store has its rows back, the segment is not registered and
    /// its file is gone.
    #[test]
    fn a_conversion_interrupted_by_a_crash_is_undone_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2 * super::super::COMMIT_CHUNK as i64 * 4;
        let want: Vec<(i64, i64)> = (0..n).map(|k| (k, k)).collect();
        let file;
        {
            let store = RowStore::open(dir.path(), 64 << 20).unwrap();
            store.create_table(&table()).unwrap();
            let entry = store.table(16384).unwrap();
            let rows: Vec<Change> = (0..n)
                .map(|k| row_change(&entry, k, Some(k), true))
                .collect();
            store.apply(&rows).unwrap();
            let before = live_in_row_store(&store, 0);
            assert!(before > super::super::COMMIT_CHUNK as u64, "{before}");
            let pending = store.begin_conversion(16384, 0).unwrap().unwrap();
            file = pending.seg.path.clone();
            store.finish_conversion_with(pending, 1).unwrap();
            assert!(
                live_in_row_store(&store, 0) < before,
                "the first chunk was applied"
            );
            assert_eq!(by_key(&store, n), want, "readable in between");
        }
        let store = RowStore::open(dir.path(), 64 << 20).unwrap();
        assert!(store.segments(16384, 0).is_empty());
        assert!(!file.exists(), "the unregistered segment file is removed");
        assert_eq!(by_key(&store, n), want);
    }
}
