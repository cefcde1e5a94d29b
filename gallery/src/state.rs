//! The in-memory view of the store: columns of templates (sealed segments + rows from the WAL),
//! the minutiae finger records, and the subject table (`subjects.rs`). Rebuilt at open from the
//! files; changed only by applying WAL records, so replay and live writes run the same code.
//!
//! Resident cost per vector template: 4 bytes (the row's subject slot) + 1 byte (its state),
//! plus the subject table's few dozen bytes per subject; the fp16 vectors of sealed rows are
//! memory-mapped, not heap.

use crate::error::{GalleryError, Result};
use crate::finger_segment::{FingerRecord, FingerSegment};
use crate::segment::{RowMeta, Segment};
use crate::subjects::{SubjectTable, NO_SUBJECT};
use crate::wal::WalRecord;
use biomatch_core::finger::FingerTemplate;
use biomatch_core::{Modality, ModelId, SubjectId};
use half::f16;

/// Row state bit: set once a row is deleted; the low bits keep the modality code (0..=10).
pub(crate) const DELETED: u8 = 0x80;

/// The modality code of a row state byte.
pub(crate) fn modality_code(state: u8) -> u8 {
    state & !DELETED
}

/// All templates of one model, addressed by a dense row id that is never reused.
#[derive(Debug)]
pub(crate) struct Column {
    pub model: ModelId,
    pub dim: usize,
    /// Sealed, memory-mapped segments, contiguous in row id from 0.
    pub segments: Vec<Segment>,
    /// Rows appended since the last checkpoint, row-major fp16.
    pub mem: Vec<f16>,
    pub mem_first_row: u64,
    /// The subject slot owning each row ([`NO_SUBJECT`] for deleted rows loaded from segments).
    pub subject: Vec<u32>,
    /// One byte per row: modality code, with [`DELETED`] set once deleted. Compact for the scan.
    pub state: Vec<u8>,
    pub live: usize,
}

impl Column {
    pub fn new(model: ModelId, dim: usize) -> Self {
        Self {
            model,
            dim,
            segments: Vec::new(),
            mem: Vec::new(),
            mem_first_row: 0,
            subject: Vec::new(),
            state: Vec::new(),
            live: 0,
        }
    }

    pub fn rows(&self) -> u64 {
        self.state.len() as u64
    }

    pub fn mem_rows(&self) -> u64 {
        self.rows() - self.mem_first_row
    }

    /// The stored template of `row`.
    pub fn vector(&self, row: u64) -> &[f16] {
        let d = self.dim;
        if row >= self.mem_first_row {
            let i = (row - self.mem_first_row) as usize * d;
            return &self.mem[i..i + d];
        }
        let s = self.segments.partition_point(|s| s.first_row <= row) - 1;
        let seg = &self.segments[s];
        let i = (row - seg.first_row) as usize * d;
        &seg.vectors()[i..i + d]
    }

    /// Contiguous blocks of vectors with the row id of their first row, in row order.
    pub fn blocks(&self) -> impl Iterator<Item = (u64, &[f16])> {
        self.segments
            .iter()
            .map(|s| (s.first_row, s.vectors()))
            .chain(std::iter::once((self.mem_first_row, &self.mem[..])))
    }

    fn push(&mut self, subject: u32, modality: Modality, vector: &[f16]) -> u64 {
        let row = self.rows();
        self.state.push(modality.code());
        self.subject.push(subject);
        self.mem.extend_from_slice(vector);
        self.live += 1;
        row
    }

    pub fn delete_row(&mut self, row: u64) {
        let s = &mut self.state[row as usize];
        if *s & DELETED == 0 {
            *s |= DELETED;
            self.live -= 1;
        }
    }

    pub fn is_live(&self, row: u64) -> bool {
        self.state[row as usize] & DELETED == 0
    }
}

/// The minutiae fingers of every subject: one variable-length record per subject that has
/// fingers, addressed by a dense record id that is never reused.
#[derive(Debug, Default)]
pub(crate) struct Fingers {
    /// Sealed, memory-mapped segments, contiguous in record id from 0, with their file names.
    pub segments: Vec<(FingerSegment, std::path::PathBuf)>,
    /// Records logged since the last checkpoint.
    pub mem: Vec<FingerRecord>,
    pub mem_first: u64,
    /// One flag per record: live (true) or deleted.
    pub live: Vec<bool>,
    pub live_count: usize,
    /// Live fingers (templates) over all records.
    pub live_fingers: usize,
}

impl Fingers {
    pub fn records(&self) -> u64 {
        self.live.len() as u64
    }

    pub fn mem_records(&self) -> u64 {
        self.records() - self.mem_first
    }

    /// The fingers of record `id` (from memory, or decoded from its segment's map).
    pub fn get(&self, id: u64) -> Result<Vec<FingerTemplate>> {
        if id >= self.mem_first {
            return Ok(self.mem[(id - self.mem_first) as usize].fingers.clone());
        }
        let s = self.segments.partition_point(|(s, _)| s.first_record <= id) - 1;
        let (seg, path) = &self.segments[s];
        seg.fingers(id, path)
    }

    fn push(&mut self, rec: FingerRecord) -> u64 {
        let id = self.records();
        self.live_fingers += rec.fingers.len();
        self.mem.push(rec);
        self.live.push(true);
        self.live_count += 1;
        id
    }

    /// Mark record `id`, holding `fingers` templates, deleted.
    pub fn delete(&mut self, id: u64, fingers: usize) {
        let l = &mut self.live[id as usize];
        if *l {
            *l = false;
            self.live_count -= 1;
            self.live_fingers -= fingers;
        }
    }

    fn heap_bytes(&self) -> usize {
        self.live.capacity()
            + self
                .mem
                .iter()
                .map(|r| 64 + r.fingers.iter().map(|f| 48 + f.minutiae.len() * 8).sum::<usize>())
                .sum::<usize>()
    }
}

/// The bit set of positions `fingers` hold (bit p for position p).
pub(crate) fn position_bits(fingers: &[FingerTemplate]) -> u16 {
    fingers.iter().filter_map(|f| f.position).fold(0, |b, p| b | 1 << p.code())
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub columns: Vec<Column>,
    pub fingers: Fingers,
    pub subjects: SubjectTable,
    pub last_seq: u64,
}

impl State {
    /// Heap bytes of the resident metadata (row owners and states, the subject table, finger
    /// record flags and unsealed records), from the structures' capacities. The fp16 vectors
    /// of sealed rows are mapped, not counted here; unsealed ones are.
    pub fn metadata_bytes(&self) -> u64 {
        let cols: usize =
            self.columns.iter().map(|c| c.subject.capacity() * 4 + c.state.capacity()).sum();
        (cols + self.subjects.heap_bytes() + self.fingers.heap_bytes()) as u64
    }

    /// The column holding templates of `model`, or the error a probe or enrollment of that model
    /// deserves (naming the gallery's version of the same model when there is one).
    pub fn column_of(&self, model: &ModelId) -> Result<u16> {
        if let Some(i) = self.columns.iter().position(|c| &c.model == model) {
            return Ok(i as u16);
        }
        let gallery =
            self.columns.iter().find(|c| c.model.name() == model.name()).map(|c| c.model.clone());
        Err(GalleryError::ModelMismatch { got: model.clone(), gallery })
    }

    /// The live subject's slot, or find-or-make one for rows being loaded.
    fn slot_for_load(&mut self, subject: &SubjectId, seq: u64) -> u32 {
        match self.subjects.find(subject) {
            Some(i) => {
                if seq > self.subjects.seq(i) {
                    self.subjects.set_seq(i, seq);
                }
                i
            }
            None => self.subjects.insert(subject, seq, true),
        }
    }

    /// Index the rows loaded from segments (`meta[c]`: column `c`'s row metadata in row order;
    /// tombstones already applied to the columns' states).
    pub fn index_loaded_rows(&mut self, meta: Vec<Vec<RowMeta>>) {
        for (ci, rows) in meta.into_iter().enumerate() {
            let mut owners = Vec::with_capacity(rows.len());
            for (row, m) in rows.into_iter().enumerate() {
                if !self.columns[ci].is_live(row as u64) {
                    owners.push(NO_SUBJECT);
                    continue;
                }
                let i = self.slot_for_load(&m.subject, m.seq);
                self.subjects.add_template(i, m.modality, ci as u16, row as u64);
                self.last_seq = self.last_seq.max(m.seq);
                owners.push(i);
            }
            self.columns[ci].subject = owners;
        }
    }

    /// Index the finger records loaded from segments (`meta`: each record's seq and subject, in
    /// record order), after tombstones were applied.
    pub fn index_loaded_fingers(&mut self, meta: Vec<(u64, SubjectId)>) -> Result<()> {
        for (id, (seq, subject)) in meta.into_iter().enumerate() {
            if !self.fingers.live[id] {
                continue;
            }
            let bits = position_bits(&self.fingers.get(id as u64)?);
            self.fingers.live_fingers += bits.count_ones() as usize;
            let i = self.slot_for_load(&subject, seq);
            self.subjects.set_fingers(i, id as u64, bits);
            self.last_seq = self.last_seq.max(seq);
        }
        Ok(())
    }

    /// Drop spare capacity after loading.
    pub fn shrink(&mut self) {
        self.subjects.shrink();
        for c in &mut self.columns {
            c.subject.shrink_to_fit();
            c.state.shrink_to_fit();
        }
        self.fingers.live.shrink_to_fit();
    }

    /// The row metadata of `rows` of column `c`, for writing a segment.
    pub fn row_meta(&self, c: usize, rows: std::ops::Range<u64>) -> Vec<RowMeta> {
        let col = &self.columns[c];
        rows.map(|r| {
            let slot = col.subject[r as usize];
            RowMeta {
                seq: self.subjects.seq(slot),
                modality: Modality::from_code(modality_code(col.state[r as usize]))
                    .expect("a valid modality code"),
                subject: self.subjects.id(slot),
            }
        })
        .collect()
    }

    /// A live subject's finger record, if it has fingers.
    pub fn finger_record(&self, subject: &SubjectId) -> Option<(u64, u16)> {
        self.subjects.find(subject).and_then(|i| self.subjects.fingers(i))
    }

    /// (modality, column, row) of every vector template of a live subject slot.
    pub fn templates_of(&self, slot: u32) -> Vec<(Modality, u16, u64)> {
        self.subjects
            .templates(slot)
            .map(|(c, r)| {
                let code = modality_code(self.columns[c as usize].state[r as usize]);
                (Modality::from_code(code).expect("a valid modality code"), c, r)
            })
            .collect()
    }

    fn push_fingers(
        &mut self,
        seq: u64,
        subject: &SubjectId,
        fingers: &[FingerTemplate],
    ) -> (u64, u16) {
        let bits = position_bits(fingers);
        let rec = FingerRecord { seq, subject: subject.clone(), fingers: fingers.to_vec() };
        (self.fingers.push(rec), bits)
    }

    /// Apply one logged record. Records are validated before they are logged, so a record that
    /// does not fit the state means the files disagree with each other: reported as `Err(reason)`.
    pub fn apply(&mut self, rec: &WalRecord) -> std::result::Result<(), String> {
        if rec.seq() <= self.last_seq {
            return Err(format!("record seq {} does not follow {}", rec.seq(), self.last_seq));
        }
        match rec {
            WalRecord::Enroll { seq, subject, templates, fingers } => {
                if self.subjects.contains(subject) {
                    return Err(format!("enrollment of {subject}, who is already enrolled"));
                }
                // Check every template before changing anything: a record applies whole or not.
                for t in templates {
                    match self.columns.get(t.column as usize) {
                        None => return Err(format!("record names unknown column {}", t.column)),
                        Some(c) if c.dim != t.vector.len() => {
                            return Err(format!(
                                "record of dim {} in column of dim {}",
                                t.vector.len(),
                                c.dim
                            ))
                        }
                        Some(_) => {}
                    }
                }
                let slot = self.subjects.insert(subject, *seq, true);
                for t in templates {
                    let row = self.columns[t.column as usize].push(slot, t.modality, &t.vector);
                    self.subjects.add_template(slot, t.modality, t.column, row);
                }
                if !fingers.is_empty() {
                    let (id, bits) = self.push_fingers(*seq, subject, fingers);
                    self.subjects.set_fingers(slot, id, bits);
                }
            }
            WalRecord::Attach { seq, subject, fingers } => {
                if self.finger_record(subject).is_some() {
                    return Err(format!("fingers attached to {subject}, who has fingers"));
                }
                let (id, bits) = self.push_fingers(*seq, subject, fingers);
                let slot = match self.subjects.find(subject) {
                    Some(i) => i,
                    None => self.subjects.insert(subject, *seq, true),
                };
                self.subjects.set_seq(slot, *seq);
                self.subjects.set_fingers(slot, id, bits);
            }
            WalRecord::Delete { subject, .. } => {
                let slot = self
                    .subjects
                    .remove(subject)
                    .ok_or_else(|| format!("delete of {subject}, who is not enrolled"))?;
                let rows: Vec<(u16, u64)> = self.subjects.templates(slot).collect();
                for (c, row) in rows {
                    self.columns[c as usize].delete_row(row);
                }
                if let Some((id, bits)) = self.subjects.fingers(slot) {
                    self.fingers.delete(id, bits.count_ones() as usize);
                }
            }
        }
        self.last_seq = rec.seq();
        Ok(())
    }
}
