//! A structural JPEG check: the marker segments are walked and every scan's Huffman-coded data is
//! decoded symbol by symbol (no IDCT, no pixels) to prove it holds exactly the MCUs the frame
//! header declares.
//!
//! Why: JPEG decoders (`jpeg-decoder`, `zune-jpeg`, libjpeg with a warning only) fill the rest of
//! a scan with zero bits when they meet a marker early, so a file cut in half with an
//! end-of-image marker appended decodes to an image whose lower half is grey or garbage, and
//! would be enrolled. Here such a file is refused: a scan must not run out of data before its
//! last MCU, must not carry whole bytes after it (padding bits of the last byte and `FF` fill
//! bytes are allowed), restart markers must come in order, every component must be coded, and a
//! progressive image must bring every coefficient of every component to full precision (no
//! missing refinement scans). The frame header is read by [`header`] without walking the scans,
//! so the memory a decode needs is known before anything is decoded.
//!
//! Accepted: baseline and extended sequential (SOF0/SOF1) and progressive (SOF2) Huffman JPEGs
//! with 1–4 components. Refused: lossless, arithmetic-coded and hierarchical JPEGs (the decoder
//! behind this check does not support the last two; lossless photos are not accepted), a scan
//! with no Huffman table defined, a height defined later (DNL). Bytes after the end-of-image
//! marker are ignored (phone cameras append data there); they count against the byte limit.

/// A frame header (SOF) and the sampling of its components.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub width: u16,
    pub height: u16,
    pub progressive: bool,
    /// (component id, horizontal sampling, vertical sampling).
    pub components: Vec<(u8, u8, u8)>,
}

impl Frame {
    fn max_sampling(&self) -> (usize, usize) {
        let h = self.components.iter().map(|c| c.1).max().unwrap_or(1);
        let v = self.components.iter().map(|c| c.2).max().unwrap_or(1);
        (usize::from(h), usize::from(v))
    }

    /// MCUs across and down for an interleaved scan.
    pub fn mcus(&self) -> (usize, usize) {
        let (hm, vm) = self.max_sampling();
        (usize::from(self.width).div_ceil(8 * hm), usize::from(self.height).div_ceil(8 * vm))
    }

    /// Blocks of component `i` in the MCU-padded grid (what a decoder allocates), across and down.
    pub fn padded_blocks(&self, i: usize) -> (usize, usize) {
        let (mx, my) = self.mcus();
        let (_, h, v) = self.components[i];
        (mx * usize::from(h), my * usize::from(v))
    }

    /// Blocks of component `i` a non-interleaved scan codes, across and down.
    fn scan_blocks(&self, i: usize) -> (usize, usize) {
        let (hm, vm) = self.max_sampling();
        let (_, h, v) = self.components[i];
        let w = (usize::from(self.width) * usize::from(h)).div_ceil(hm);
        let ht = (usize::from(self.height) * usize::from(v)).div_ceil(vm);
        (w.div_ceil(8), ht.div_ceil(8))
    }
}

type Res<T> = Result<T, String>;

/// The frame header, read by skipping marker segments up to the first SOF. Nothing is decoded.
pub fn header(b: &[u8]) -> Res<Frame> {
    let mut p = soi(b)?;
    loop {
        let (m, next) = marker(b, p)?;
        match m {
            0xC0..=0xCF if !matches!(m, 0xC4 | 0xC8 | 0xCC) => {
                let seg = segment(b, next)?;
                return frame(m, seg);
            }
            0xD9 => return Err("no frame header before the end of the image".into()),
            0xDA => return Err("a scan before the frame header".into()),
            0xD0..=0xD7 => return Err("a restart marker outside a scan".into()),
            _ => p = next + 2 + segment(b, next)?.len(),
        }
    }
}

/// Walk the whole file: every scan decoded symbol by symbol, up to the end-of-image marker.
/// Returns the frame header.
pub fn verify(b: &[u8]) -> Res<Frame> {
    let mut p = soi(b)?;
    let mut frame_hdr: Option<Frame> = None;
    let mut tables: [[Option<Huffman>; 4]; 2] = Default::default();
    let mut restart = 0usize;
    let mut scans = 0usize;
    // Sequential: whether each component has been coded. Progressive: per component and
    // coefficient, the successive-approximation bit the last scan left it at (None = not yet).
    let mut coded: Vec<bool> = Vec::new();
    let mut al: Vec<[Option<u8>; 64]> = Vec::new();
    // Progressive: per component, the non-zero history of each block's coefficients (bit k).
    let mut nonzero: Vec<Vec<u64>> = Vec::new();
    loop {
        let (m, next) = marker(b, p)?;
        match m {
            0xD8 => return Err("a second start-of-image marker".into()),
            0xD9 => {
                let f = frame_hdr.ok_or("no frame header")?;
                if scans == 0 {
                    return Err("no scan".into());
                }
                if f.progressive {
                    if al.iter().any(|c| c.iter().any(|a| *a != Some(0))) {
                        return Err("progressive scans missing: some coefficients never reach \
                                    full precision (truncated file?)"
                            .into());
                    }
                } else if coded.iter().any(|c| !c) {
                    return Err("a component has no scan (truncated file?)".into());
                }
                return Ok(f);
            }
            0xD0..=0xD7 => return Err("a restart marker outside a scan".into()),
            0xC4 => {
                let seg = segment(b, next)?;
                dht(seg, &mut tables)?;
                p = next + 2 + seg.len();
            }
            0xDD => {
                let seg = segment(b, next)?;
                if seg.len() != 2 {
                    return Err("bad DRI length".into());
                }
                restart = usize::from(u16::from_be_bytes([seg[0], seg[1]]));
                p = next + 2 + seg.len();
            }
            0xDC => return Err("DNL (height defined after the first scan) is not supported".into()),
            0xC0..=0xCF if !matches!(m, 0xC8 | 0xCC) => {
                if frame_hdr.is_some() {
                    return Err("a second frame header".into());
                }
                let seg = segment(b, next)?;
                let f = frame(m, seg)?;
                let n = f.components.len();
                coded = vec![false; n];
                al = vec![[None; 64]; n];
                if f.progressive {
                    nonzero = (0..n)
                        .map(|i| {
                            let (bx, by) = f.scan_blocks(i);
                            vec![0u64; bx * by]
                        })
                        .collect();
                }
                frame_hdr = Some(f);
                p = next + 2 + seg.len();
            }
            0xDA => {
                let f = frame_hdr.as_ref().ok_or("a scan before the frame header")?;
                let seg = segment(b, next)?;
                let scan = sos(seg, f, &tables)?;
                scan.check_progression(f, &mut coded, &mut al)?;
                let start = next + 2 + seg.len();
                p = walk(b, start, f, &scan, &tables, restart, &mut nonzero)?;
                scans += 1;
                if scans > 1000 {
                    return Err("more than 1000 scans".into());
                }
            }
            // APPn, COM, DQT, DAC-less extensions: skipped by length.
            0xE0..=0xEF | 0xFE | 0xDB => p = next + 2 + segment(b, next)?.len(),
            _ => return Err(format!("unexpected marker FF{m:02X}")),
        }
    }
}

fn soi(b: &[u8]) -> Res<usize> {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return Err("not a JPEG (no start-of-image marker)".into());
    }
    Ok(2)
}

/// The marker at `p` (fill bytes `FF` allowed before it) and the position after it.
fn marker(b: &[u8], mut p: usize) -> Res<(u8, usize)> {
    if b.get(p) != Some(&0xFF) {
        return if p >= b.len() {
            Err("truncated: the file ends before its end-of-image marker".into())
        } else {
            Err(format!("extraneous data where a marker was expected (offset {p})"))
        };
    }
    while b.get(p) == Some(&0xFF) {
        p += 1;
    }
    match b.get(p) {
        None => Err("truncated: the file ends inside a marker".into()),
        Some(0) => Err("a stuffed zero byte where a marker was expected".into()),
        Some(&m) => Ok((m, p + 1)),
    }
}

/// The payload of the length-prefixed segment starting at `p`.
fn segment(b: &[u8], p: usize) -> Res<&[u8]> {
    let len = match b.get(p..p + 2) {
        Some(l) => usize::from(u16::from_be_bytes([l[0], l[1]])),
        None => return Err("truncated: the file ends inside a segment header".into()),
    };
    if len < 2 {
        return Err("a segment length below 2".into());
    }
    b.get(p + 2..p + len).ok_or_else(|| "truncated: the file ends inside a segment".into())
}

fn frame(m: u8, s: &[u8]) -> Res<Frame> {
    let progressive = match m {
        0xC0 | 0xC1 => false,
        0xC2 => true,
        0xC3 => return Err("lossless JPEG is not accepted".into()),
        _ => return Err(format!("unsupported JPEG coding (SOF{})", m - 0xC0)),
    };
    if s.len() < 6 {
        return Err("frame header too short".into());
    }
    if s[0] != 8 && s[0] != 12 {
        return Err(format!("sample precision {} is not supported", s[0]));
    }
    let height = u16::from_be_bytes([s[1], s[2]]);
    let width = u16::from_be_bytes([s[3], s[4]]);
    let n = usize::from(s[5]);
    if width == 0 || height == 0 {
        return Err("a zero image dimension".into());
    }
    if !(1..=4).contains(&n) || s.len() != 6 + 3 * n {
        return Err("bad component count in the frame header".into());
    }
    let mut components = Vec::with_capacity(n);
    for c in s[6..].chunks_exact(3) {
        let (h, v) = (c[1] >> 4, c[1] & 15);
        if !(1..=4).contains(&h) || !(1..=4).contains(&v) || c[2] > 3 {
            return Err("bad sampling factors or quantisation table".into());
        }
        if components.iter().any(|x: &(u8, u8, u8)| x.0 == c[0]) {
            return Err("duplicate component id".into());
        }
        components.push((c[0], h, v));
    }
    Ok(Frame { width, height, progressive, components })
}

/// A canonical Huffman table: a 9-bit lookup for short codes, the JPEG F.2.2.3 arrays for the rest.
#[derive(Clone, Debug)]
struct Huffman {
    /// Indexed by the next 9 bits: (code length, symbol); length 0 = longer code.
    fast: Vec<(u8, u8)>,
    maxcode: [i32; 17],
    valptr: [i32; 17],
    mincode: [i32; 17],
    values: Vec<u8>,
}

impl Huffman {
    fn new(counts: &[u8; 16], values: &[u8]) -> Res<Huffman> {
        let mut maxcode = [-1i32; 17];
        let mut valptr = [0i32; 17];
        let mut mincode = [0i32; 17];
        let mut fast = vec![(0u8, 0u8); 512];
        let (mut code, mut k) = (0i32, 0usize);
        for len in 1..=16 {
            let n = usize::from(counts[len - 1]);
            valptr[len] = k as i32;
            mincode[len] = code;
            for _ in 0..n {
                if code >= (1 << len) {
                    return Err("a Huffman table with too many codes".into());
                }
                if len <= 9 {
                    let shift = 9 - len;
                    let base = (code as usize) << shift;
                    for e in &mut fast[base..base + (1 << shift)] {
                        *e = (len as u8, values[k]);
                    }
                }
                code += 1;
                k += 1;
            }
            if n > 0 {
                maxcode[len] = code - 1;
            }
            code <<= 1;
        }
        Ok(Huffman { fast, maxcode, valptr, mincode, values: values.to_vec() })
    }
}

fn dht(mut s: &[u8], tables: &mut [[Option<Huffman>; 4]; 2]) -> Res<()> {
    while !s.is_empty() {
        if s.len() < 17 {
            return Err("Huffman table segment too short".into());
        }
        let (class, id) = (usize::from(s[0] >> 4), usize::from(s[0] & 15));
        if class > 1 || id > 3 {
            return Err("bad Huffman table class or id".into());
        }
        let mut counts = [0u8; 16];
        counts.copy_from_slice(&s[1..17]);
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total > 256 || s.len() < 17 + total {
            return Err("bad Huffman table length".into());
        }
        tables[class][id] = Some(Huffman::new(&counts, &s[17..17 + total])?);
        s = &s[17 + total..];
    }
    Ok(())
}

/// A scan header: (component index in the frame, DC table, AC table) and the spectral and
/// successive-approximation parameters.
struct Scan {
    comps: Vec<(usize, usize, usize)>,
    ss: u8,
    se: u8,
    ah: u8,
    al: u8,
}

fn sos(s: &[u8], f: &Frame, tables: &[[Option<Huffman>; 4]; 2]) -> Res<Scan> {
    let n = usize::from(*s.first().ok_or("empty scan header")?);
    if !(1..=4).contains(&n) || s.len() != 1 + 2 * n + 3 {
        return Err("bad scan header length".into());
    }
    let mut comps = Vec::with_capacity(n);
    for c in s[1..1 + 2 * n].chunks_exact(2) {
        let i = f
            .components
            .iter()
            .position(|x| x.0 == c[0])
            .ok_or("a scan names a component the frame does not have")?;
        if comps.iter().any(|x: &(usize, usize, usize)| x.0 == i) {
            return Err("a component twice in one scan".into());
        }
        comps.push((i, usize::from(c[1] >> 4), usize::from(c[1] & 15)));
    }
    let t = &s[1 + 2 * n..];
    let scan = Scan { comps, ss: t[0], se: t[1], ah: t[2] >> 4, al: t[2] & 15 };
    if n > 1 {
        let blocks: usize = scan
            .comps
            .iter()
            .map(|&(i, _, _)| f.components[i].1 * f.components[i].2)
            .map(usize::from)
            .sum();
        if blocks > 10 {
            return Err("more than 10 blocks in an MCU".into());
        }
    }
    for &(_, dc, ac) in &scan.comps {
        let dc_needed = (scan.ss == 0 && scan.ah == 0) || !f.progressive;
        let ac_needed = scan.se > 0;
        if dc > 3 || ac > 3 {
            return Err("bad Huffman table id in a scan".into());
        }
        if (dc_needed && tables[0][dc].is_none()) || (ac_needed && tables[1][ac].is_none()) {
            return Err("a scan uses a Huffman table that is not defined".into());
        }
    }
    Ok(scan)
}

impl Scan {
    /// Check the scan against what earlier scans coded, and record it.
    fn check_progression(
        &self,
        f: &Frame,
        coded: &mut [bool],
        al: &mut [[Option<u8>; 64]],
    ) -> Res<()> {
        if !f.progressive {
            if self.ss != 0 || self.se != 63 || self.ah != 0 || self.al != 0 {
                return Err("bad spectral selection in a sequential scan".into());
            }
            for &(i, _, _) in &self.comps {
                if std::mem::replace(&mut coded[i], true) {
                    return Err("a component coded twice".into());
                }
            }
            return Ok(());
        }
        if self.se > 63 || self.ss > self.se || self.al > 13 {
            return Err("bad progressive scan parameters".into());
        }
        if self.ss == 0 && self.se != 0 {
            return Err("a progressive DC scan with AC coefficients".into());
        }
        if self.ss > 0 && self.comps.len() != 1 {
            return Err("an interleaved progressive AC scan".into());
        }
        for &(i, _, _) in &self.comps {
            if self.ss > 0 && al[i][0].is_none() {
                return Err("an AC scan before the component's DC scan".into());
            }
            for a in &mut al[i][usize::from(self.ss)..=usize::from(self.se)] {
                let ok = match *a {
                    None => self.ah == 0,
                    Some(prev) => self.ah == prev && self.al + 1 == self.ah,
                };
                if !ok {
                    return Err("bad successive approximation sequence".into());
                }
                *a = Some(self.al);
            }
        }
        Ok(())
    }
}

/// Reads entropy-coded bits; never invents any: asking past the segment's end is an error.
struct Bits<'a> {
    b: &'a [u8],
    p: usize,
    acc: u64,
    n: u32,
    /// A marker (not a stuffed zero) was found at `p`.
    at_marker: bool,
}

const PREMATURE: &str = "truncated scan: the entropy-coded data ends before the last MCU";

impl<'a> Bits<'a> {
    fn new(b: &'a [u8], p: usize) -> Self {
        Bits { b, p, acc: 0, n: 0, at_marker: false }
    }

    fn fill(&mut self) {
        while self.n <= 56 && !self.at_marker {
            let Some(&x) = self.b.get(self.p) else { return };
            if x == 0xFF {
                match self.b.get(self.p + 1) {
                    Some(0) => self.p += 2,
                    _ => {
                        self.at_marker = true;
                        return;
                    }
                }
            } else {
                self.p += 1;
            }
            self.acc |= u64::from(x) << (56 - self.n);
            self.n += 8;
        }
    }

    fn bits(&mut self, k: u32) -> Res<u32> {
        if k == 0 {
            return Ok(0);
        }
        if self.n < k {
            self.fill();
            if self.n < k {
                return Err(PREMATURE.into());
            }
        }
        let v = (self.acc >> (64 - k)) as u32;
        self.acc <<= k;
        self.n -= k;
        Ok(v)
    }

    fn decode(&mut self, h: &Huffman) -> Res<u8> {
        if self.n < 16 {
            self.fill();
        }
        if self.n >= 9 {
            let (len, v) = h.fast[(self.acc >> 55) as usize];
            if len > 0 {
                self.acc <<= len;
                self.n -= u32::from(len);
                return Ok(v);
            }
        }
        let mut code = 0i32;
        for len in 1..=16 {
            code = (code << 1) | self.bits(1)? as i32;
            if code <= h.maxcode[len] {
                let i = h.valptr[len] + code - h.mincode[len];
                return h
                    .values
                    .get(i as usize)
                    .copied()
                    .ok_or_else(|| "a bad Huffman code".to_string());
            }
        }
        Err("a bad Huffman code".into())
    }

    /// The end of an interval: only padding bits of the last byte may be left, and no bytes
    /// before the marker. Returns the position of the marker.
    fn finish(&mut self) -> Res<usize> {
        let mut extra = self.n / 8;
        while !self.at_marker {
            match self.b.get(self.p) {
                None => return Err("truncated: the file ends inside a scan".into()),
                Some(0xFF) if self.b.get(self.p + 1) != Some(&0) => self.at_marker = true,
                Some(0xFF) => {
                    self.p += 2;
                    extra += 1;
                }
                Some(_) => {
                    self.p += 1;
                    extra += 1;
                }
            }
        }
        if extra > 0 {
            return Err(format!(
                "{extra} bytes of entropy-coded data after the last MCU of a scan (corrupt or \
                 spliced file)"
            ));
        }
        Ok(self.p)
    }
}

/// Decode one scan's data from `start`; returns the position of the marker that ends it.
fn walk(
    b: &[u8],
    start: usize,
    f: &Frame,
    scan: &Scan,
    tables: &[[Option<Huffman>; 4]; 2],
    restart: usize,
    nonzero: &mut [Vec<u64>],
) -> Res<usize> {
    let mut r = Bits::new(b, start);
    let interleaved = scan.comps.len() > 1;
    let units = if interleaved {
        let (mx, my) = f.mcus();
        mx * my
    } else {
        let (bx, by) = f.scan_blocks(scan.comps[0].0);
        bx * by
    };
    let mut eobrun = 0u32;
    let mut expected_rst = 0u8;
    for u in 0..units {
        if restart > 0 && u > 0 && u % restart == 0 {
            r.n -= r.n % 8;
            let at = r.finish()?;
            let (m, next) = marker(b, at)?;
            if m != 0xD0 + expected_rst {
                return Err(format!("restart marker RST{expected_rst} missing in a scan"));
            }
            expected_rst = (expected_rst + 1) % 8;
            r = Bits::new(b, next);
            eobrun = 0;
        }
        for &(i, dc, ac) in &scan.comps {
            let blocks = if interleaved {
                usize::from(f.components[i].1) * usize::from(f.components[i].2)
            } else {
                1
            };
            for _ in 0..blocks {
                if !f.progressive {
                    sequential_block(&mut r, tables, dc, ac)?;
                } else if scan.ss == 0 {
                    if scan.ah == 0 {
                        let h = tables[0][dc].as_ref().expect("checked in sos");
                        let s = r.decode(h)?;
                        if s > 16 {
                            return Err("a bad DC difference size".into());
                        }
                        r.bits(u32::from(s))?;
                    } else {
                        r.bits(1)?;
                    }
                } else {
                    let h = tables[1][ac].as_ref().expect("checked in sos");
                    let nz = nonzero[i].get_mut(u).expect("one history per block of the scan");
                    if scan.ah == 0 {
                        ac_first(&mut r, h, scan, &mut eobrun, nz)?;
                    } else {
                        ac_refine(&mut r, h, scan, &mut eobrun, nz)?;
                    }
                }
            }
        }
    }
    r.n -= r.n % 8;
    let at = r.finish()?;
    // Some encoders end a scan with a restart marker: skip it.
    match marker(b, at)? {
        (0xD0..=0xD7, next) => Ok(next),
        _ => Ok(at),
    }
}

fn sequential_block(
    r: &mut Bits,
    tables: &[[Option<Huffman>; 4]; 2],
    dc: usize,
    ac: usize,
) -> Res<()> {
    let (dct, act) = (
        tables[0][dc].as_ref().expect("checked in sos"),
        tables[1][ac].as_ref().expect("checked in sos"),
    );
    let s = r.decode(dct)?;
    if s > 16 {
        return Err("a bad DC difference size".into());
    }
    r.bits(u32::from(s))?;
    let mut k = 1;
    while k < 64 {
        let rs = r.decode(act)?;
        let (run, size) = (rs >> 4, rs & 15);
        if size == 0 {
            if run != 15 {
                break;
            }
            k += 16;
            continue;
        }
        k += usize::from(run);
        r.bits(u32::from(size))?;
        k += 1;
    }
    Ok(())
}

fn ac_first(r: &mut Bits, h: &Huffman, scan: &Scan, eobrun: &mut u32, nz: &mut u64) -> Res<()> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = usize::from(scan.ss);
    let se = usize::from(scan.se);
    while k <= se {
        let rs = r.decode(h)?;
        let (run, size) = (u32::from(rs >> 4), u32::from(rs & 15));
        if size == 0 {
            if run < 15 {
                *eobrun = (1 << run) - 1 + r.bits(run)?;
                break;
            }
            k += 16;
            continue;
        }
        k += run as usize;
        if k > se {
            return Err("an AC coefficient outside the scan's band".into());
        }
        r.bits(size)?;
        *nz |= 1 << k;
        k += 1;
    }
    Ok(())
}

fn ac_refine(r: &mut Bits, h: &Huffman, scan: &Scan, eobrun: &mut u32, nz: &mut u64) -> Res<()> {
    let mut k = usize::from(scan.ss);
    let se = usize::from(scan.se);
    if *eobrun == 0 {
        while k <= se {
            let rs = r.decode(h)?;
            let (mut run, size) = (i32::from(rs >> 4), rs & 15);
            if size != 0 {
                if size != 1 {
                    return Err("a bad refinement code".into());
                }
                r.bits(1)?;
            } else if run != 15 {
                *eobrun = (1 << run) + r.bits(run as u32)?;
                break;
            }
            while k <= se {
                if *nz & (1 << k) != 0 {
                    r.bits(1)?;
                } else {
                    run -= 1;
                    if run < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if size != 0 {
                if k > se {
                    return Err("a refinement coefficient outside the scan's band".into());
                }
                *nz |= 1 << k;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            if *nz & (1 << k) != 0 {
                r.bits(1)?;
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}
