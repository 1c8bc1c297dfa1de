//! A streaming MP4 (ISO BMFF) writer for one video track, used to record clips without
//! re-encoding.
//!
//! Samples are appended to `mdat` as they arrive through a small buffer, so a camera holds
//! only its sample table in memory (a few bytes per frame), not the clip. `moov` goes at the
//! end. The sample entry (`avc1`/`hvc1` with its `avcC`/`hvcC`) comes from retina's
//! `VideoParameters::mp4_sample_entry`, so the writer needs no codec knowledge. A hand-written
//! writer is used because the Rust MP4 crates either buffer the whole file or do not take a
//! ready-made sample entry; it writes the dozen boxes a single-track file needs.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Buffer per open segment: small, because 1000 cameras each hold one.
const WRITE_BUFFER: usize = 16 * 1024;

/// Header bytes written before the first sample: `ftyp` (32) + `mdat` header (8).
const FTYP: [u8; 32] = [
    0, 0, 0, 32, b'f', b't', b'y', b'p', b'i', b's', b'o', b'm', 0, 0, 2, 0, b'i', b's', b'o',
    b'm', b'i', b's', b'o', b'2', b'a', b'v', b'c', b'1', b'm', b'p', b'4', b'1',
];

/// Writes one MP4 segment file.
pub struct Mp4Writer {
    out: BufWriter<File>,
    path: PathBuf,
    sample_entry: Vec<u8>,
    width: u16,
    height: u16,
    timescale: u32,
    sizes: Vec<u32>,
    /// Run-length encoded durations: (count, duration).
    durations: Vec<(u32, u32)>,
    /// 1-based numbers of sync (key) samples.
    sync: Vec<u32>,
    mdat_bytes: u64,
    total_duration: u64,
}

impl Mp4Writer {
    /// Creates `path` and writes the file header.
    pub fn create(
        path: &Path,
        sample_entry: Vec<u8>,
        (width, height): (u32, u32),
        timescale: u32,
    ) -> std::io::Result<Mp4Writer> {
        let file = File::create(path)?;
        let mut out = BufWriter::with_capacity(WRITE_BUFFER, file);
        out.write_all(&FTYP)?;
        // mdat header; the size is patched in `finish`.
        out.write_all(&[0, 0, 0, 0, b'm', b'd', b'a', b't'])?;
        Ok(Mp4Writer {
            out,
            path: path.to_path_buf(),
            sample_entry,
            width: width.min(u32::from(u16::MAX)) as u16,
            height: height.min(u32::from(u16::MAX)) as u16,
            timescale,
            sizes: Vec::with_capacity(256),
            durations: Vec::new(),
            sync: Vec::new(),
            mdat_bytes: 0,
            total_duration: 0,
        })
    }

    /// Appends one access unit (4-byte length-prefixed NAL units) lasting `duration` ticks.
    pub fn push(&mut self, data: &[u8], duration: u32, is_sync: bool) -> std::io::Result<()> {
        let size =
            u32::try_from(data.len()).map_err(|_| std::io::Error::other("sample too large"))?;
        if self.mdat_bytes + u64::from(size) > u64::from(u32::MAX) - 8 - 32 {
            return Err(std::io::Error::other("segment larger than 4 GiB"));
        }
        self.out.write_all(data)?;
        self.mdat_bytes += u64::from(size);
        self.sizes.push(size);
        if is_sync {
            self.sync.push(self.sizes.len() as u32);
        }
        match self.durations.last_mut() {
            Some((n, d)) if *d == duration => *n += 1,
            _ => self.durations.push((1, duration)),
        }
        self.total_duration += u64::from(duration);
        Ok(())
    }

    /// Samples written so far.
    pub fn samples(&self) -> usize {
        self.sizes.len()
    }

    /// Total duration in timescale ticks.
    pub fn duration_ticks(&self) -> u64 {
        self.total_duration
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `moov`, patches the `mdat` size and closes the file. Returns the file size.
    pub fn finish(mut self) -> std::io::Result<u64> {
        let moov = self.moov();
        self.out.write_all(&moov)?;
        let mut file = self.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(FTYP.len() as u64))?;
        file.write_all(&((self.mdat_bytes + 8) as u32).to_be_bytes())?;
        file.sync_data()?;
        Ok(FTYP.len() as u64 + 8 + self.mdat_bytes + moov.len() as u64)
    }

    fn moov(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(1024 + self.sizes.len() * 4);
        let duration = u32::try_from(self.total_duration).unwrap_or(u32::MAX);
        let chunk_offset = FTYP.len() as u32 + 8;
        boxed(&mut b, b"moov", |b| {
            full_box(b, b"mvhd", 0, 0, |b| {
                put32(b, 0); // creation_time
                put32(b, 0); // modification_time
                put32(b, self.timescale);
                put32(b, duration);
                put32(b, 0x0001_0000); // rate 1.0
                b.extend_from_slice(&[0x01, 0x00]); // volume 1.0
                b.extend_from_slice(&[0; 10]); // reserved
                matrix(b);
                b.extend_from_slice(&[0; 24]); // pre_defined
                put32(b, 2); // next_track_ID
            });
            boxed(b, b"trak", |b| {
                full_box(b, b"tkhd", 0, 3, |b| {
                    put32(b, 0);
                    put32(b, 0);
                    put32(b, 1); // track_ID
                    put32(b, 0); // reserved
                    put32(b, duration);
                    b.extend_from_slice(&[0; 8]); // reserved
                    b.extend_from_slice(&[0; 4]); // layer, alternate_group
                    b.extend_from_slice(&[0; 4]); // volume (video: 0), reserved
                    matrix(b);
                    put32(b, u32::from(self.width) << 16);
                    put32(b, u32::from(self.height) << 16);
                });
                boxed(b, b"mdia", |b| {
                    full_box(b, b"mdhd", 0, 0, |b| {
                        put32(b, 0);
                        put32(b, 0);
                        put32(b, self.timescale);
                        put32(b, duration);
                        b.extend_from_slice(&[0x55, 0xc4, 0, 0]); // language "und", pre_defined
                    });
                    full_box(b, b"hdlr", 0, 0, |b| {
                        put32(b, 0);
                        b.extend_from_slice(b"vide");
                        b.extend_from_slice(&[0; 12]);
                        b.extend_from_slice(b"Panoptes video\0");
                    });
                    boxed(b, b"minf", |b| {
                        full_box(b, b"vmhd", 0, 1, |b| b.extend_from_slice(&[0; 8]));
                        boxed(b, b"dinf", |b| {
                            full_box(b, b"dref", 0, 0, |b| {
                                put32(b, 1);
                                full_box(b, b"url ", 0, 1, |_| {});
                            });
                        });
                        boxed(b, b"stbl", |b| {
                            full_box(b, b"stsd", 0, 0, |b| {
                                put32(b, 1);
                                b.extend_from_slice(&self.sample_entry);
                            });
                            full_box(b, b"stts", 0, 0, |b| {
                                put32(b, self.durations.len() as u32);
                                for &(n, d) in &self.durations {
                                    put32(b, n);
                                    put32(b, d);
                                }
                            });
                            if self.sync.len() != self.sizes.len() {
                                full_box(b, b"stss", 0, 0, |b| {
                                    put32(b, self.sync.len() as u32);
                                    for &s in &self.sync {
                                        put32(b, s);
                                    }
                                });
                            }
                            // All samples in one chunk right after the mdat header.
                            full_box(b, b"stsc", 0, 0, |b| {
                                if self.sizes.is_empty() {
                                    put32(b, 0);
                                } else {
                                    put32(b, 1);
                                    put32(b, 1);
                                    put32(b, self.sizes.len() as u32);
                                    put32(b, 1);
                                }
                            });
                            full_box(b, b"stsz", 0, 0, |b| {
                                put32(b, 0);
                                put32(b, self.sizes.len() as u32);
                                for &s in &self.sizes {
                                    put32(b, s);
                                }
                            });
                            full_box(b, b"stco", 0, 0, |b| {
                                if self.sizes.is_empty() {
                                    put32(b, 0);
                                } else {
                                    put32(b, 1);
                                    put32(b, chunk_offset);
                                }
                            });
                        });
                    });
                });
            });
        });
        b
    }
}

fn put32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn matrix(b: &mut Vec<u8>) {
    for v in [0x0001_0000u32, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
        put32(b, v);
    }
}

fn boxed(b: &mut Vec<u8>, kind: &[u8; 4], body: impl FnOnce(&mut Vec<u8>)) {
    let start = b.len();
    put32(b, 0);
    b.extend_from_slice(kind);
    body(b);
    let size = (b.len() - start) as u32;
    b[start..start + 4].copy_from_slice(&size.to_be_bytes());
}

fn full_box(
    b: &mut Vec<u8>,
    kind: &[u8; 4],
    version: u8,
    flags: u32,
    body: impl FnOnce(&mut Vec<u8>),
) {
    boxed(b, kind, |b| {
        put32(b, (u32::from(version) << 24) | (flags & 0x00ff_ffff));
        body(b);
    });
}
