//! A trace's `doc` column: its JSON as an LZ4 or a zstd frame (by its size, the default), or plain.

use std::io::Read;

use super::*;

/// How the `doc` column holds a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DocEncoding {
    /// An LZ4 frame for a doc of less than [`LARGE_DOC`] bytes of JSON (a summary trace), a
    /// zstd frame for a larger one (a full trace): the default. A small doc fits its row's page
    /// either way, so the CPU is what matters, and LZ4 takes half of zstd's; a large one spills
    /// into overflow pages, so the bytes are, and zstd's are ~0.6× LZ4's (BENCHMARKS.md,
    /// "Trace store").
    #[default]
    BySize,
    /// A standard LZ4 frame of the JSON, whatever its size.
    Lz4,
    /// A zstd frame (level 1) of the JSON, whatever its size: the smallest file.
    Zstd,
    /// The JSON itself: readable in the `sqlite3` shell, ~4× the bytes to write.
    Json,
}

/// The JSON size from which [`DocEncoding::BySize`] writes zstd frames: a summary trace's
/// JSON is ~6–8 KB (~2.4 KB as LZ4, one row in a 4 KiB page), a full trace's ~160 KB.
pub const LARGE_DOC: usize = 16 << 10;

/// zstd's level 1: its fastest standard level; higher levels gain little on trace JSON.
const ZSTD_LEVEL: i32 = 1;
/// Every zstd frame starts with these bytes; JSON starts with `{`.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// Every LZ4 frame starts with these bytes (0x184D2204, little-endian).
const LZ4_MAGIC: [u8; 4] = [0x04, 0x22, 0x4D, 0x18];

/// The frame descriptor every LZ4 doc is written with: FLG 0x60 (format version 1,
/// independent blocks, no checksums, no content size), BD 0x70 (blocks of at most 4 MiB),
/// and the header checksum of those two bytes (the second byte of their xxHash32).
const LZ4_DESCRIPTOR: [u8; 3] = [0x60, 0x70, 0x73];
/// The largest block BD 0x70 allows.
const LZ4_BLOCK_MAX: usize = 4 << 20;
/// A block size with this bit set marks a block stored uncompressed.
const LZ4_STORED: u32 = 1 << 31;

/// Turns traces' JSON into docs of one encoding; one per batch, so its buffers and zstd's
/// context (creating one costs more than compressing a small trace) are reused.
pub(super) struct DocWriter {
    encoding: DocEncoding,
    /// Made at the first doc that needs it.
    zstd: Option<zstd::bulk::Compressor<'static>>,
    json: Vec<u8>,
    doc: Vec<u8>,
    block: Vec<u8>,
}

/// The form `encoding` gives a doc of `json_len` bytes of JSON: [`DocEncoding::Lz4`],
/// [`DocEncoding::Zstd`] or [`DocEncoding::Json`], never [`DocEncoding::BySize`].
pub(super) fn form_of(encoding: DocEncoding, json_len: usize) -> DocEncoding {
    match encoding {
        DocEncoding::BySize if json_len >= LARGE_DOC => DocEncoding::Zstd,
        DocEncoding::BySize => DocEncoding::Lz4,
        other => other,
    }
}

impl DocWriter {
    pub(super) fn new(encoding: DocEncoding) -> Self {
        Self {
            encoding,
            zstd: None,
            json: Vec::new(),
            doc: Vec::new(),
            block: Vec::new(),
        }
    }

    /// `trace`'s doc, valid until the next call.
    pub(super) fn encode(&mut self, trace: &Trace) -> Result<&[u8], StoreError> {
        self.json.clear();
        serde_json::to_writer(&mut self.json, trace).map_err(|e| StoreError::Refused(e.to_string()))?;
        match form_of(self.encoding, self.json.len()) {
            DocEncoding::Zstd => {
                let z = match &mut self.zstd {
                    Some(z) => z,
                    none => none.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(unavailable)?),
                };
                self.doc = z.compress(&self.json).map_err(unavailable)?;
                Ok(&self.doc)
            }
            DocEncoding::Lz4 | DocEncoding::BySize => {
                lz4_frame(&self.json, &mut self.doc, &mut self.block);
                Ok(&self.doc)
            }
            DocEncoding::Json => Ok(&self.json),
        }
    }
}

/// Writes `input` as one LZ4 frame into `out` (cleared first): the header, each 4 MiB of the
/// input as an independent block (stored as it is where compressing does not make it
/// smaller), and the end mark. `block` is scratch space. Any LZ4 frame reader reads it back,
/// the `lz4` command line tool included.
pub(super) fn lz4_frame(input: &[u8], out: &mut Vec<u8>, block: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&LZ4_MAGIC);
    out.extend_from_slice(&LZ4_DESCRIPTOR);
    for chunk in input.chunks(LZ4_BLOCK_MAX) {
        block.resize(lz4_flex::block::get_maximum_output_size(chunk.len()), 0);
        // The buffer holds the worst case, so compressing into it cannot fail; if it did, the
        // chunk is stored as it is, which is always valid.
        match lz4_flex::block::compress_into(chunk, block) {
            Ok(len) if len < chunk.len() => {
                out.extend_from_slice(&(len as u32).to_le_bytes());
                out.extend_from_slice(&block[..len]);
            }
            _ => {
                out.extend_from_slice(&(chunk.len() as u32 | LZ4_STORED).to_le_bytes());
                out.extend_from_slice(chunk);
            }
        }
    }
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// The trace a `doc` holds, whichever [`DocEncoding`] wrote it (an LZ4 frame from any writer).
pub(super) fn decode_doc(doc: &[u8]) -> Result<Trace, String> {
    if doc.starts_with(&LZ4_MAGIC) {
        let mut json = Vec::with_capacity(doc.len() * 4);
        lz4_flex::frame::FrameDecoder::new(doc)
            .read_to_end(&mut json)
            .map_err(|e| format!("lz4: {e}"))?;
        serde_json::from_slice(&json).map_err(|e| e.to_string())
    } else if doc.starts_with(&ZSTD_MAGIC) {
        let json = zstd::decode_all(doc).map_err(|e| format!("zstd: {e}"))?;
        serde_json::from_slice(&json).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(doc).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_frame(frame: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        lz4_flex::frame::FrameDecoder::new(frame)
            .read_to_end(&mut back)
            .expect("a valid LZ4 frame");
        back
    }

    /// The frame is standard (a reader other than ours checks its header checksum and reads
    /// it) for a small doc, an empty input, incompressible bytes (stored blocks) and an input
    /// over one block, whose second block is incompressible.
    #[test]
    fn lz4_frames_read_back_with_a_standard_reader() {
        let json = serde_json::to_vec(&crate::sample::summary_trace(3, 1_000)).unwrap();
        // Incompressible: a xorshift sequence's bytes.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..70_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut big: Vec<u8> = json.iter().copied().cycle().take(LZ4_BLOCK_MAX).collect();
        big.extend_from_slice(&noise);
        let (mut out, mut block) = (Vec::new(), Vec::new());
        for input in [&json[..], &[][..], &noise[..], &big[..]] {
            lz4_frame(input, &mut out, &mut block);
            assert_eq!(&out[..7], &[0x04, 0x22, 0x4D, 0x18, 0x60, 0x70, 0x73]);
            assert_eq!(&out[out.len() - 4..], &[0, 0, 0, 0], "no end mark");
            assert_eq!(read_frame(&out), input, "{} bytes", input.len());
        }
        // The small doc compresses; the noise is stored: header, one block's size, the bytes,
        // the end mark.
        lz4_frame(&json, &mut out, &mut block);
        assert!(out.len() * 2 < json.len(), "{} bytes for {}", out.len(), json.len());
        lz4_frame(&noise, &mut out, &mut block);
        assert_eq!(out.len(), 7 + 4 + noise.len() + 4);
        assert_eq!(
            u32::from_le_bytes(out[7..11].try_into().unwrap()),
            noise.len() as u32 | LZ4_STORED
        );
        // The big input: two blocks, the first compressed, the second stored.
        lz4_frame(&big, &mut out, &mut block);
        let first = u32::from_le_bytes(out[7..11].try_into().unwrap());
        assert!(
            first & LZ4_STORED == 0 && (first as usize) < LZ4_BLOCK_MAX / 2,
            "{first:#x}"
        );
        let second_at = 11 + first as usize;
        let second = u32::from_le_bytes(out[second_at..second_at + 4].try_into().unwrap());
        assert_eq!(second, noise.len() as u32 | LZ4_STORED);
    }

    /// The default writes small docs as LZ4 frames and large ones as zstd frames; the others
    /// keep their form whatever the size.
    #[test]
    fn the_default_form_follows_the_size() {
        assert_eq!(form_of(DocEncoding::BySize, 0), DocEncoding::Lz4);
        assert_eq!(form_of(DocEncoding::BySize, LARGE_DOC - 1), DocEncoding::Lz4);
        assert_eq!(form_of(DocEncoding::BySize, LARGE_DOC), DocEncoding::Zstd);
        for other in [DocEncoding::Lz4, DocEncoding::Zstd, DocEncoding::Json] {
            for len in [0, LARGE_DOC - 1, LARGE_DOC, 1 << 30] {
                assert_eq!(form_of(other, len), other);
            }
        }
        // Through the writer: a summary trace (JSON under the bound) and a full one (over it).
        let mut writer = DocWriter::new(DocEncoding::default());
        let summary = crate::sample::summary_trace(1, 1_000);
        let full = crate::sample::full_trace(1, 1_000);
        assert!(serde_json::to_vec(&summary).unwrap().len() < LARGE_DOC);
        assert!(serde_json::to_vec(&full).unwrap().len() >= LARGE_DOC);
        assert!(writer.encode(&summary).unwrap().starts_with(&LZ4_MAGIC));
        let doc = writer.encode(&full).unwrap().to_vec();
        assert!(doc.starts_with(&ZSTD_MAGIC));
        assert_eq!(decode_doc(&doc).unwrap(), full);
        assert!(writer.encode(&summary).unwrap().starts_with(&LZ4_MAGIC));
    }

    /// Each encoding's doc decodes to the trace; what is neither frame nor JSON is an error.
    #[test]
    fn every_encoding_decodes_and_garbage_is_refused() {
        let trace = crate::sample::summary_trace(9, 2_000);
        for encoding in [
            DocEncoding::BySize,
            DocEncoding::Lz4,
            DocEncoding::Zstd,
            DocEncoding::Json,
        ] {
            let mut writer = DocWriter::new(encoding);
            // Twice, through the reused buffers.
            for _ in 0..2 {
                let doc = writer.encode(&trace).unwrap().to_vec();
                assert_eq!(decode_doc(&doc).unwrap(), trace, "{encoding:?}");
            }
        }
        let mut lz4 = DocWriter::new(DocEncoding::Lz4).encode(&trace).unwrap().to_vec();
        lz4.truncate(lz4.len() / 2);
        assert!(decode_doc(&lz4).unwrap_err().starts_with("lz4: "));
        assert!(decode_doc(&ZSTD_MAGIC).unwrap_err().starts_with("zstd: "));
        assert!(decode_doc(b"not a doc").is_err());
    }
}
