//! The resident subject table: every subject id interned once, addressed by a dense `u32`
//! index that rows point to, with a few bytes of state per subject.
//!
//! At national scale the metadata next to each template decides how many templates a node
//! holds, so nothing here is a per-subject heap object:
//! - ids live back to back in one byte **arena** (`ends[i]` is where subject `i`'s bytes end).
//!   Ids ending in a run of digits — national id numbers (`199012345678`) and prefixed ones
//!   (`CM-1990-000001`, `SYN-000000123`) — take the **numeric fast path**: a tag byte
//!   `0x80 | n`, the index of the prefix in a small prefix table, the digit count (leading
//!   zeros are kept), then the number in `n` little-endian bytes. A printable-ASCII id never
//!   starts with a byte ≥ 0x80, so the two encodings cannot be confused;
//! - a **hash index** (`hashbrown::HashTable<u32>`, 5 bytes a slot) over the live subjects,
//!   hashed on the id's text, finds a subject without allocating;
//! - per subject: its sequence number (5 bytes: up to 2^40 writes per store), the row of its
//!   first vector template (4 bytes) and — only once some subject's first template is in
//!   another column than the first, or has minutiae fingers — that column and its finger
//!   record. A subject's further vector templates (rare: vector finger models) sit in a side
//!   map.
//!
//! A dense index is never reused while the store is open: a deleted subject's slot stays (its
//! rows may still be scanned until the next rebuild), and re-enrolling the id takes a new slot.

use biomatch_core::{Modality, SubjectId};
use hashbrown::HashTable;
use std::collections::HashMap;
use std::hash::BuildHasher;

/// "No subject" for a row whose owner is not known (a deleted row loaded from a segment).
pub(crate) const NO_SUBJECT: u32 = u32::MAX;
const NO_ROW: u32 = u32::MAX;
const NO_COLUMN: u8 = u8::MAX;
/// At most this many distinct prefixes take the numeric fast path.
const MAX_PREFIXES: usize = 255;

#[derive(Debug, Default)]
pub(crate) struct SubjectTable {
    arena: Vec<u8>,
    ends: Vec<u32>,
    prefixes: Vec<Box<[u8]>>,
    index: HashTable<u32>,
    hasher: std::collections::hash_map::RandomState,
    /// Sequence numbers, 40 bits little endian.
    seq: Vec<[u8; 5]>,
    primary_row: Vec<u32>,
    /// Empty while every first template is in column 0; then one entry per subject.
    primary_col: Vec<u8>,
    /// The templates after the first that sit in one column on consecutive rows (a subject's
    /// finger codes, enrolled in one record, are): first row, column and count, 6 bytes per
    /// subject. Empty until a subject has a second template.
    run_row: Vec<u32>,
    run_col: Vec<u8>,
    run_len: Vec<u8>,
    /// Vector templates after those, by subject (rare: a hash map entry costs ~70 bytes).
    extra: HashMap<u32, Vec<(Modality, u16, u64)>>,
    /// Empty until the first finger record; then one entry per subject: 0 none, else
    /// `(record + 1) << 11 | position bits`.
    fingers: Vec<u64>,
}

/// An id decoded into a stack buffer.
struct IdBuf {
    buf: [u8; SubjectId::MAX_LEN],
    len: usize,
}

impl IdBuf {
    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl SubjectTable {
    /// Subjects ever interned (live and deleted).
    #[cfg(test)]
    pub fn slots(&self) -> usize {
        self.ends.len()
    }

    /// Live subjects.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn hash(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    fn decode(&self, i: u32) -> IdBuf {
        Self::view(&self.arena, &self.ends, &self.prefixes).decode(i)
    }

    /// The id of subject `i`.
    pub fn id(&self, i: u32) -> SubjectId {
        let b = self.decode(i);
        SubjectId::new(std::str::from_utf8(b.bytes()).expect("ASCII"))
            .expect("interned ids are valid")
    }

    /// Append the encoding of `id` to the arena.
    fn encode(&mut self, id: &[u8]) {
        let digits = id.iter().rev().take_while(|b| b.is_ascii_digit()).count().min(19);
        if digits > 0 {
            let (prefix, num) = id.split_at(id.len() - digits);
            let n: u64 = std::str::from_utf8(num).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            let nb = ((64 - n.leading_zeros()).div_ceil(8) as usize).max(1);
            let slot = match self.prefixes.iter().position(|p| &**p == prefix) {
                Some(p) => Some(p),
                None if self.prefixes.len() < MAX_PREFIXES => {
                    self.prefixes.push(prefix.into());
                    Some(self.prefixes.len() - 1)
                }
                None => None,
            };
            if let Some(p) = slot.filter(|_| 3 + nb < id.len()) {
                self.arena.push(0x80 | nb as u8);
                self.arena.push(p as u8);
                self.arena.push(digits as u8);
                self.arena.extend_from_slice(&n.to_le_bytes()[..nb]);
                return;
            }
        }
        self.arena.extend_from_slice(id);
    }

    /// The live subject with this id.
    pub fn find(&self, id: &SubjectId) -> Option<u32> {
        let b = id.as_str().as_bytes();
        self.index.find(self.hash(b), |&i| self.decode(i).bytes() == b).copied()
    }

    pub fn contains(&self, id: &SubjectId) -> bool {
        self.find(id).is_some()
    }

    /// Intern `id` in a new slot. `live`: also index it (a live subject must not be indexed
    /// already); not live: a slot for rows of a deleted subject.
    pub fn insert(&mut self, id: &SubjectId, seq: u64, live: bool) -> u32 {
        let i = u32::try_from(self.ends.len())
            .ok()
            .filter(|&i| i != NO_SUBJECT)
            .expect("fewer than 2^32 - 1 subjects per open store (a rebuild compacts the slots)");
        self.encode(id.as_str().as_bytes());
        self.ends.push(u32::try_from(self.arena.len()).expect("subject id arena below 4 GiB"));
        self.seq.push(seq40(seq));
        self.primary_row.push(NO_ROW);
        if !self.primary_col.is_empty() {
            self.primary_col.push(0);
        }
        if !self.run_row.is_empty() {
            self.run_row.push(NO_ROW);
            self.run_col.push(0);
            self.run_len.push(0);
        }
        if !self.fingers.is_empty() {
            self.fingers.push(0);
        }
        if live {
            let h = self.hash(id.as_str().as_bytes());
            let hasher = &self.hasher;
            let (arena, ends, prefixes) = (&self.arena, &self.ends, &self.prefixes);
            self.index.insert_unique(h, i, |&j| {
                let view = SubjectTable::view(arena, ends, prefixes);
                hasher.hash_one(view.decode(j).bytes())
            });
        }
        i
    }

    /// A read-only table over borrowed parts, for rehashing while the index is borrowed.
    fn view<'a>(arena: &'a [u8], ends: &'a [u32], prefixes: &'a [Box<[u8]>]) -> Ids<'a> {
        Ids { arena, ends, prefixes }
    }

    /// Take a live subject out of the index; its slot (and its rows' link to it) stays.
    pub fn remove(&mut self, id: &SubjectId) -> Option<u32> {
        let b = id.as_str().as_bytes();
        let h = self.hash(b);
        let (arena, ends, prefixes) = (&self.arena, &self.ends, &self.prefixes);
        let entry = self
            .index
            .find_entry(h, |&i| SubjectTable::view(arena, ends, prefixes).decode(i).bytes() == b)
            .ok()?;
        let (i, _) = entry.remove();
        Some(i)
    }

    pub fn seq(&self, i: u32) -> u64 {
        let b = self.seq[i as usize];
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], 0, 0, 0])
    }

    pub fn set_seq(&mut self, i: u32, seq: u64) {
        self.seq[i as usize] = seq40(seq);
    }

    fn column_of_first(&self, k: usize) -> u16 {
        self.primary_col.get(k).map_or(0, |&c| u16::from(c))
    }

    /// Record a vector template of subject `i` (modality, column, row).
    pub fn add_template(&mut self, i: u32, modality: Modality, column: u16, row: u64) {
        let k = i as usize;
        if self.primary_row[k] == NO_ROW && column < u16::from(NO_COLUMN) && row < u64::from(NO_ROW)
        {
            self.primary_row[k] = row as u32;
            if column != 0 && self.primary_col.is_empty() {
                self.primary_col = vec![0; self.ends.len()];
            }
            if let Some(c) = self.primary_col.get_mut(k) {
                *c = column as u8;
            }
        } else if !self.extend_run(k, column, row) {
            self.extra.entry(i).or_default().push((modality, column, row));
        }
    }

    /// Add `(column, row)` to subject `k`'s run of consecutive rows when it starts or continues
    /// it; false when it does not fit (another column, a gap, 255 already).
    fn extend_run(&mut self, k: usize, column: u16, row: u64) -> bool {
        if column >= u16::from(NO_COLUMN) || row >= u64::from(NO_ROW) {
            return false;
        }
        if self.run_row.is_empty() {
            self.run_row = vec![NO_ROW; self.ends.len()];
            self.run_col = vec![0; self.ends.len()];
            self.run_len = vec![0; self.ends.len()];
        }
        if self.run_len[k] == 0 {
            if self.extra.contains_key(&(k as u32)) {
                return false; // Keep the templates in their order.
            }
            (self.run_row[k], self.run_col[k], self.run_len[k]) = (row as u32, column as u8, 1);
            return true;
        }
        let next = u64::from(self.run_row[k]) + u64::from(self.run_len[k]);
        if u16::from(self.run_col[k]) == column && row == next && self.run_len[k] < u8::MAX {
            self.run_len[k] += 1;
            return true;
        }
        false
    }

    /// (column, row) of each vector template of subject `i`, the first first; the modality is
    /// the row's (see `Column::state`).
    pub fn templates(&self, i: u32) -> impl Iterator<Item = (u16, u64)> + '_ {
        let k = i as usize;
        let first = (self.primary_row[k] != NO_ROW)
            .then(|| (self.column_of_first(k), u64::from(self.primary_row[k])));
        let (run_row, run_col, run_len) = match self.run_len.get(k) {
            Some(&n) if n > 0 => (u64::from(self.run_row[k]), u16::from(self.run_col[k]), n),
            _ => (0, 0, 0),
        };
        first
            .into_iter()
            .chain((0..u64::from(run_len)).map(move |j| (run_col, run_row + j)))
            .chain(self.extra.get(&i).into_iter().flatten().map(|&(_, c, r)| (c, r)))
    }

    /// Subject `i`'s finger record and the bit set of its positions.
    pub fn fingers(&self, i: u32) -> Option<(u64, u16)> {
        match self.fingers.get(i as usize).copied() {
            None | Some(0) => None,
            Some(v) => Some(((v >> 11) - 1, (v & 0x7ff) as u16)),
        }
    }

    pub fn set_fingers(&mut self, i: u32, record: u64, bits: u16) {
        if self.fingers.is_empty() {
            self.fingers = vec![0; self.ends.len()];
        }
        self.fingers[i as usize] = ((record + 1) << 11) | u64::from(bits & 0x7ff);
    }

    /// Every live subject's slot.
    pub fn live(&self) -> impl Iterator<Item = u32> + '_ {
        self.index.iter().copied()
    }

    /// Drop spare capacity (after a bulk load).
    pub fn shrink(&mut self) {
        self.arena.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.seq.shrink_to_fit();
        self.primary_row.shrink_to_fit();
        self.primary_col.shrink_to_fit();
        self.run_row.shrink_to_fit();
        self.run_col.shrink_to_fit();
        self.run_len.shrink_to_fit();
        self.fingers.shrink_to_fit();
        let (arena, ends, prefixes) = (&self.arena, &self.ends, &self.prefixes);
        let hasher = &self.hasher;
        self.index.shrink_to_fit(|&j| {
            hasher.hash_one(SubjectTable::view(arena, ends, prefixes).decode(j).bytes())
        });
    }

    /// Heap bytes held (capacities, not lengths: what the process pays).
    pub fn heap_bytes(&self) -> usize {
        self.arena.capacity()
            + self.ends.capacity() * 4
            + self.prefixes.iter().map(|p| p.len() + 16).sum::<usize>()
            + index_buckets(self.index.capacity()) * (std::mem::size_of::<u32>() + 1)
            + self.seq.capacity() * 5
            + self.primary_row.capacity() * 4
            + self.primary_col.capacity()
            + self.run_row.capacity() * 4
            + self.run_col.capacity()
            + self.run_len.capacity()
            + self.fingers.capacity() * 8
            + self.extra.capacity() * (4 + 24 + 8)
            + self.extra.values().map(|v| v.capacity() * 16).sum::<usize>()
    }
}

/// A sequence number in 40 bits (the store refuses to go past 2^40 writes).
fn seq40(seq: u64) -> [u8; 5] {
    assert!(seq < 1 << 40, "more than 2^40 writes in one store");
    let b = seq.to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4]]
}

/// Buckets (slots + control bytes) behind a hashbrown table of `capacity`: it keeps a
/// power-of-two bucket count at most 7/8 full.
fn index_buckets(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        c if c < 8 => (c + 1).next_power_of_two(),
        c => (c * 8 / 7).next_power_of_two(),
    }
}

/// The id part of a table, borrowed apart from the hash index (so the index can rehash).
struct Ids<'a> {
    arena: &'a [u8],
    ends: &'a [u32],
    prefixes: &'a [Box<[u8]>],
}

impl Ids<'_> {
    fn decode(&self, i: u32) -> IdBuf {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        let e = &self.arena[start..self.ends[i] as usize];
        let mut out = IdBuf { buf: [0; SubjectId::MAX_LEN], len: 0 };
        if e[0] < 0x80 {
            out.buf[..e.len()].copy_from_slice(e);
            out.len = e.len();
            return out;
        }
        let nb = (e[0] & 0x0f) as usize;
        let prefix = &self.prefixes[e[1] as usize];
        let digits = e[2] as usize;
        let mut num = [0u8; 8];
        num[..nb].copy_from_slice(&e[3..3 + nb]);
        let mut n = u64::from_le_bytes(num);
        out.buf[..prefix.len()].copy_from_slice(prefix);
        let end = prefix.len() + digits;
        for k in (prefix.len()..end).rev() {
            out.buf[k] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        out.len = end;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> SubjectId {
        SubjectId::new(s).unwrap()
    }

    #[test]
    fn ids_round_trip_in_both_encodings() {
        let mut t = SubjectTable::default();
        let ids = [
            "199012345678",
            "0001",
            "0",
            "CM-1990-000001",
            "SYN-000000123",
            "A",
            "x9",
            "no-digits",
            "18446744073709551615",
            "9999999999999999999",
            "P-00000000000000000000000000042",
            &"Z".repeat(64),
        ];
        for (k, id) in ids.iter().enumerate() {
            let i = t.insert(&sid(id), k as u64 + 1, true);
            assert_eq!(t.id(i), sid(id));
        }
        for (k, id) in ids.iter().enumerate() {
            let i = t.find(&sid(id)).unwrap();
            assert_eq!((t.id(i), t.seq(i)), (sid(id), k as u64 + 1));
        }
        assert!(t.find(&sid("CM-1990-00001")).is_none(), "leading zeros are part of the id");
        assert!(t.find(&sid("SYN-123")).is_none());
        // The numeric fast path is short.
        let before = t.arena.len();
        t.insert(&sid("SYN-000999999"), 1, true);
        assert_eq!(t.arena.len() - before, 6);
    }

    #[test]
    fn remove_keeps_the_slot_and_reinsert_takes_a_new_one() {
        let mut t = SubjectTable::default();
        let a = t.insert(&sid("A-1"), 1, true);
        t.add_template(a, Modality::Face, 0, 7);
        assert_eq!(t.remove(&sid("A-1")), Some(a));
        assert_eq!(t.find(&sid("A-1")), None);
        assert_eq!(t.id(a), sid("A-1"), "rows may still name the slot");
        let b = t.insert(&sid("A-1"), 2, true);
        assert_ne!(a, b);
        assert_eq!(t.find(&sid("A-1")), Some(b));
        assert_eq!((t.len(), t.slots()), (1, 2));
    }

    #[test]
    fn templates_and_fingers() {
        let mut t = SubjectTable::default();
        let a = t.insert(&sid("A"), 1, true);
        let f = Modality::Finger(biomatch_core::FingerPosition::new(3).unwrap());
        t.add_template(a, Modality::Face, 0, 5);
        t.add_template(a, f, 1, 9);
        assert_eq!(t.templates(a).collect::<Vec<_>>(), vec![(0, 5), (1, 9)]);
        assert_eq!(t.fingers(a), None);
        t.set_fingers(a, 0, 0b1000_0100);
        let b = t.insert(&sid("B"), 2, true);
        assert_eq!((t.fingers(a), t.fingers(b)), (Some((0, 0b1000_0100)), None));
        t.set_fingers(b, 1 << 40, 0x7fe);
        assert_eq!(t.fingers(b), Some((1 << 40, 0x7fe)));
        // A first template in another column than 0, and sequence numbers past 32 bits.
        let c = t.insert(&sid("C"), (1 << 39) + 5, true);
        t.add_template(c, Modality::Face, 2, 11);
        assert_eq!(t.templates(c).collect::<Vec<_>>(), vec![(2, 11)]);
        assert_eq!(t.templates(a).collect::<Vec<_>>(), vec![(0, 5), (1, 9)]);
        assert_eq!(t.seq(c), (1 << 39) + 5);
        let d = t.insert(&sid("D"), 4, true);
        t.add_template(d, Modality::Face, 0, 12);
        assert_eq!(t.templates(d).collect::<Vec<_>>(), vec![(0, 12)]);
        // A face and ten finger codes: the codes are one run; a gap or another column goes to
        // the map, in order.
        let e = t.insert(&sid("E"), 5, true);
        t.add_template(e, Modality::Face, 0, 13);
        for r in 20..30 {
            t.add_template(e, f, 1, r);
        }
        t.add_template(e, f, 1, 40);
        t.add_template(e, f, 2, 30);
        let want: Vec<(u16, u64)> = [(0, 13)]
            .into_iter()
            .chain((20..30).map(|r| (1, r)))
            .chain([(1, 40), (2, 30)])
            .collect();
        assert_eq!(t.templates(e).collect::<Vec<_>>(), want);
        assert_eq!(t.extra.get(&e).map(Vec::len), Some(2), "only the two that do not fit");
        // Subjects inserted after the runs were allocated get an empty run.
        let g = t.insert(&sid("G"), 6, true);
        assert_eq!(t.templates(g).count(), 0);
        assert_eq!(t.templates(a).collect::<Vec<_>>(), vec![(0, 5), (1, 9)]);
    }

    #[test]
    fn many_subjects_stay_findable_through_growth_and_shrink() {
        let mut t = SubjectTable::default();
        for n in 0..20_000u64 {
            t.insert(&sid(&format!("N{n:08}")), n, true);
        }
        for n in (0..20_000u64).step_by(2) {
            t.remove(&sid(&format!("N{n:08}")));
        }
        t.shrink();
        for n in 0..20_000u64 {
            assert_eq!(t.find(&sid(&format!("N{n:08}"))).is_some(), n % 2 == 1, "{n}");
        }
        assert_eq!(t.len(), 10_000);
    }
}
