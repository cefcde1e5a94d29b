//! The in-memory view of the store: columns of templates (sealed segments + rows from the WAL),
//! per-row metadata and the subject index. Rebuilt at open from the files; changed only by
//! applying WAL records, so replay and live writes run the same code.

use crate::error::{GalleryError, Result};
use crate::segment::{RowMeta, Segment};
use crate::wal::WalRecord;
use biomatch_core::{Modality, ModelId, SubjectId};
use half::f16;
use std::collections::HashMap;

/// Row state byte: the modality code (0..=10) of a live row, or this for a deleted row.
pub(crate) const DELETED: u8 = 0xFF;

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
    /// Metadata of every row (sealed and in memory).
    pub meta: Vec<RowMeta>,
    /// One byte per row: modality code, or [`DELETED`]. Compact for the scan loop.
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
            meta: Vec::new(),
            state: Vec::new(),
            live: 0,
        }
    }

    pub fn rows(&self) -> u64 {
        self.meta.len() as u64
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

    fn push(&mut self, meta: RowMeta, vector: &[f16]) -> u64 {
        let row = self.rows();
        self.state.push(meta.modality.code());
        self.meta.push(meta);
        self.mem.extend_from_slice(vector);
        self.live += 1;
        row
    }

    pub fn delete_row(&mut self, row: u64) {
        let s = &mut self.state[row as usize];
        if *s != DELETED {
            *s = DELETED;
            self.live -= 1;
        }
    }
}

/// What the store knows about one live subject.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SubjectEntry {
    pub seq: u64,
    /// (modality, column, row) of each template.
    pub templates: Vec<(Modality, u16, u64)>,
}

#[derive(Debug)]
pub(crate) struct State {
    pub columns: Vec<Column>,
    pub subjects: HashMap<SubjectId, SubjectEntry>,
    pub last_seq: u64,
}

/// Bytes glibc's malloc hands out for a request of `n` bytes (header + 16-byte rounding).
fn heap(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        (n + 8).next_multiple_of(16).max(32)
    }
}

impl State {
    /// Estimated heap bytes of the in-memory metadata (row metadata, row states, subject index):
    /// computed from the actual sizes of the structures, not measured.
    pub fn metadata_bytes(&self) -> u64 {
        let rows: usize = self
            .columns
            .iter()
            .flat_map(|c| c.meta.iter())
            .map(|m| std::mem::size_of::<RowMeta>() + 1 + heap(m.subject.as_str().len()))
            .sum();
        let slot = std::mem::size_of::<SubjectId>() + std::mem::size_of::<SubjectEntry>() + 1;
        let subjects: usize = self
            .subjects
            .iter()
            .map(|(k, e)| {
                slot * 8 / 7
                    + heap(k.as_str().len())
                    + heap(e.templates.capacity() * std::mem::size_of::<(Modality, u16, u64)>())
            })
            .sum();
        (rows + subjects) as u64
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

    /// Index the rows loaded from segments (after tombstones were applied).
    pub fn index_loaded_rows(&mut self) {
        for (ci, col) in self.columns.iter().enumerate() {
            for (row, (m, &st)) in col.meta.iter().zip(&col.state).enumerate() {
                if st == DELETED {
                    continue;
                }
                let e = self
                    .subjects
                    .entry(m.subject.clone())
                    .or_insert_with(|| SubjectEntry { seq: m.seq, templates: Vec::new() });
                e.seq = e.seq.max(m.seq);
                e.templates.push((m.modality, ci as u16, row as u64));
                self.last_seq = self.last_seq.max(m.seq);
            }
        }
    }

    /// Apply one logged record. Records are validated before they are logged, so a record that
    /// does not fit the state means the files disagree with each other: reported as `Err(reason)`.
    pub fn apply(&mut self, rec: &WalRecord) -> std::result::Result<(), String> {
        if rec.seq() <= self.last_seq {
            return Err(format!("record seq {} does not follow {}", rec.seq(), self.last_seq));
        }
        match rec {
            WalRecord::Enroll { seq, subject, templates } => {
                if self.subjects.contains_key(subject) {
                    return Err(format!("enrollment of {subject}, who is already enrolled"));
                }
                let mut placed = Vec::with_capacity(templates.len());
                for t in templates {
                    let col = self
                        .columns
                        .get_mut(t.column as usize)
                        .ok_or_else(|| format!("record names unknown column {}", t.column))?;
                    if t.vector.len() != col.dim {
                        return Err(format!(
                            "record of dim {} in column of dim {}",
                            t.vector.len(),
                            col.dim
                        ));
                    }
                    let meta =
                        RowMeta { seq: *seq, modality: t.modality, subject: subject.clone() };
                    placed.push((t.modality, t.column, col.push(meta, &t.vector)));
                }
                self.subjects
                    .insert(subject.clone(), SubjectEntry { seq: *seq, templates: placed });
            }
            WalRecord::Delete { subject, .. } => {
                let entry = self
                    .subjects
                    .remove(subject)
                    .ok_or_else(|| format!("delete of {subject}, who is not enrolled"))?;
                for (_, c, row) in entry.templates {
                    self.columns[c as usize].delete_row(row);
                }
            }
        }
        self.last_seq = rec.seq();
        Ok(())
    }
}
