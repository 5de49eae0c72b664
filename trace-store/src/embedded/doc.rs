//! A trace's `doc` column: the trace as an LZ4 or a zstd frame, or plain JSON, or (the default
//! for a small doc) a reference into its batch's chunk of docs. The default writes the trace as
//! MessagePack, the options as JSON; a doc's bytes, once out of their frame, are JSON when they
//! start with `{` and MessagePack otherwise (a MessagePack map starts with 0x80–0x8f, 0xde or
//! 0xdf), so every doc reads back whichever wrote it.

use std::io::Read;

use super::*;

/// How the `doc` column holds a trace.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DocEncoding {
    /// The trace as MessagePack: under [`LARGE_DOC`] bytes (a summary trace) into its batch's
    /// current chunk, [`CHUNK_BYTES`] of docs compressed together as one LZ4 frame in
    /// `doc_chunks`, its row holding a [`DocRef`] to it; a larger one (a full trace) as a zstd
    /// frame of its own: the default. MessagePack takes ~0.6× serde_json's time for ~0.76× the
    /// bytes. Summary traces are alike, so a chunk of ~12 takes ~0.6× the bytes of each
    /// compressed alone; a large doc spills into overflow pages either way, so its bytes are
    /// what matters, and zstd's are ~0.6× LZ4's (BENCHMARKS.md, "Trace store").
    #[default]
    BySize,
    /// A standard LZ4 frame of the JSON, whatever its size.
    Lz4,
    /// A zstd frame (level 1) of the JSON, whatever its size: the smallest file.
    Zstd,
    /// The JSON itself: readable in the `sqlite3` shell, ~4× the bytes to write.
    Json,
}

/// The doc size from which [`DocEncoding::BySize`] writes zstd frames: a summary trace is
/// ~5 KB of MessagePack (~6.6 KB of JSON), a full trace ~160 KB (~220 KB of JSON).
pub const LARGE_DOC: usize = 16 << 10;

/// The most a chunk of small docs holds before compression (it closes before a doc would take
/// it past this): LZ4's window, so every doc can match the ones before it, and what reading one
/// doc decompresses (~14 µs for ~60 KB of summary traces).
pub const CHUNK_BYTES: usize = 64 << 10;

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

/// A row's `doc` when it is in a chunk: the chunk (by the row id of its first trace,
/// `doc_chunks.first`) and the doc's bytes in the chunk's, decompressed. Stored as 20 bytes: a
/// magic no JSON, zstd or LZ4 doc starts with, then the three numbers, little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DocRef {
    pub(super) chunk: i64,
    pub(super) offset: u32,
    pub(super) len: u32,
}

const DOC_REF_MAGIC: [u8; 4] = *b"RSDR";

impl DocRef {
    pub(super) fn to_bytes(self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..4].copy_from_slice(&DOC_REF_MAGIC);
        out[4..12].copy_from_slice(&self.chunk.to_le_bytes());
        out[12..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// The reference `doc` holds, if it is one.
    pub(super) fn parse(doc: &[u8]) -> Option<Self> {
        let doc: &[u8; 20] = doc.try_into().ok()?;
        if doc[..4] != DOC_REF_MAGIC {
            return None;
        }
        let (chunk, rest) = doc[4..].split_at(8);
        let (offset, len) = rest.split_at(4);
        Some(Self {
            chunk: i64::from_le_bytes(chunk.try_into().ok()?),
            offset: u32::from_le_bytes(offset.try_into().ok()?),
            len: u32::from_le_bytes(len.try_into().ok()?),
        })
    }
}

/// Turns traces' JSON into docs of one encoding; one per batch, so its buffers and zstd's
/// context (creating one costs more than compressing a small trace) are reused, and a chunk of
/// small docs fills across its calls.
pub(super) struct DocWriter {
    encoding: DocEncoding,
    /// Made at the first doc that needs it.
    zstd: Option<zstd::bulk::Compressor<'static>>,
    /// The trace, serialized: MessagePack by size, else JSON.
    body: Vec<u8>,
    doc: Vec<u8>,
    block: Vec<u8>,
    /// The chunk being filled: its first trace's row id and its docs, one after another.
    chunk: Option<(i64, Vec<u8>)>,
    /// A chunk closed by the last [`DocWriter::encode`], to be written: (first, LZ4 frame).
    closed: Option<(i64, Vec<u8>)>,
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
            body: Vec::new(),
            doc: Vec::new(),
            block: Vec::new(),
            chunk: None,
            closed: None,
        }
    }

    /// The doc of `trace`, whose row id is `id`, valid until the next call: a frame of its own,
    /// or (by size, a small doc) a [`DocRef`] into the chunk being filled. Closing that chunk
    /// for this doc leaves it for [`DocWriter::take_closed`].
    pub(super) fn encode(&mut self, id: i64, trace: &Trace) -> Result<&[u8], StoreError> {
        self.body.clear();
        let refused = |e: &dyn std::fmt::Display| StoreError::Refused(e.to_string());
        if self.encoding == DocEncoding::BySize {
            rmp_serde::encode::write_named(&mut self.body, trace).map_err(|e| refused(&e))?;
        } else {
            serde_json::to_writer(&mut self.body, trace).map_err(|e| refused(&e))?;
        }
        if self.encoding == DocEncoding::BySize && self.body.len() < LARGE_DOC {
            if self
                .chunk
                .as_ref()
                .is_some_and(|(_, chunk)| chunk.len() + self.body.len() > CHUNK_BYTES)
            {
                self.closed = self.close();
            }
            let (first, chunk) = self.chunk.get_or_insert_with(|| (id, Vec::with_capacity(CHUNK_BYTES)));
            let place = DocRef {
                chunk: *first,
                offset: chunk.len() as u32,
                len: self.body.len() as u32,
            };
            chunk.extend_from_slice(&self.body);
            self.doc.clear();
            self.doc.extend_from_slice(&place.to_bytes());
            return Ok(&self.doc);
        }
        match form_of(self.encoding, self.body.len()) {
            DocEncoding::Zstd => {
                let z = match &mut self.zstd {
                    Some(z) => z,
                    none => none.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(unavailable)?),
                };
                self.doc = z.compress(&self.body).map_err(unavailable)?;
                Ok(&self.doc)
            }
            DocEncoding::Lz4 | DocEncoding::BySize => {
                lz4_frame(&self.body, &mut self.doc, &mut self.block);
                Ok(&self.doc)
            }
            DocEncoding::Json => Ok(&self.body),
        }
    }

    /// The chunk the last [`DocWriter::encode`] closed, if it closed one: its first trace's row
    /// id and its LZ4 frame.
    pub(super) fn take_closed(&mut self) -> Option<(i64, Vec<u8>)> {
        self.closed.take()
    }

    /// Closes the chunk being filled, if any: its first trace's row id and its LZ4 frame (the
    /// batch's last chunk, once every doc is encoded).
    pub(super) fn close(&mut self) -> Option<(i64, Vec<u8>)> {
        let (first, docs) = self.chunk.take()?;
        let mut frame = Vec::new();
        lz4_frame(&docs, &mut frame, &mut self.block);
        Some((first, frame))
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

/// The trace a row's `doc` holds, read from its chunk when it is a [`DocRef`].
pub(super) fn read_doc(conn: &Connection, doc: &[u8]) -> Result<Trace, String> {
    let Some(place) = DocRef::parse(doc) else {
        return decode_doc(doc);
    };
    let frame: Vec<u8> = conn
        .prepare_cached("SELECT frame FROM doc_chunks WHERE first = ?1")
        .and_then(|mut s| s.query_row([place.chunk], |r| r.get(0)).optional())
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("its doc's chunk {} is gone", place.chunk))?;
    let mut docs = Vec::with_capacity(CHUNK_BYTES);
    lz4_flex::frame::FrameDecoder::new(&frame[..])
        .read_to_end(&mut docs)
        .map_err(|e| format!("chunk {}: lz4: {e}", place.chunk))?;
    let start = place.offset as usize;
    let doc = start
        .checked_add(place.len as usize)
        .and_then(|end| docs.get(start..end))
        .ok_or_else(|| format!("chunk {}: no doc at {}+{}", place.chunk, place.offset, place.len))?;
    parse_body(doc)
}

/// A trace from its serialized bytes: JSON when they start with `{`, else MessagePack.
pub(super) fn parse_body(body: &[u8]) -> Result<Trace, String> {
    if body.first() == Some(&b'{') {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    } else {
        rmp_serde::from_slice(body).map_err(|e| format!("msgpack: {e}"))
    }
}

/// The trace a `doc` holds, whichever [`DocEncoding`] wrote it (an LZ4 frame from any writer),
/// but a [`DocRef`], which [`read_doc`] follows.
pub(super) fn decode_doc(doc: &[u8]) -> Result<Trace, String> {
    if doc.starts_with(&LZ4_MAGIC) {
        let mut body = Vec::with_capacity(doc.len() * 4);
        lz4_flex::frame::FrameDecoder::new(doc)
            .read_to_end(&mut body)
            .map_err(|e| format!("lz4: {e}"))?;
        parse_body(&body)
    } else if doc.starts_with(&ZSTD_MAGIC) {
        let body = zstd::decode_all(doc).map_err(|e| format!("zstd: {e}"))?;
        parse_body(&body)
    } else {
        parse_body(doc)
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
        let summary_json = rmp_serde::to_vec_named(&summary).unwrap();
        let place = |doc: &[u8]| DocRef::parse(doc).expect("a reference into the chunk");
        let first = place(writer.encode(7, &summary).unwrap());
        let doc = writer.encode(8, &full).unwrap().to_vec();
        assert!(doc.starts_with(&ZSTD_MAGIC));
        assert_eq!(decode_doc(&doc).unwrap(), full);
        let second = place(writer.encode(9, &summary).unwrap());
        let len = summary_json.len() as u32;
        assert_eq!(
            first,
            DocRef {
                chunk: 7,
                offset: 0,
                len
            }
        );
        assert_eq!(
            second,
            DocRef {
                chunk: 7,
                offset: len,
                len
            }
        );
        assert!(writer.take_closed().is_none());
        let (chunk, frame) = writer.close().expect("the open chunk");
        assert_eq!(chunk, 7);
        assert_eq!(read_frame(&frame), [&summary_json[..], &summary_json[..]].concat());
        assert!(writer.close().is_none());
    }

    /// Small docs fill chunks of at most CHUNK_BYTES, each named by its first trace's row id;
    /// every reference points at its trace's MessagePack in its chunk.
    #[test]
    fn small_docs_fill_chunks_and_each_reference_finds_its_doc() {
        let mut writer = DocWriter::new(DocEncoding::BySize);
        let traces: Vec<Trace> = (0..40)
            .map(|i| crate::sample::popular_summary_trace(i, 1_000))
            .collect();
        let mut chunks: Vec<(i64, Vec<u8>)> = Vec::new();
        let mut places = Vec::new();
        for (k, t) in traces.iter().enumerate() {
            let id = 100 + k as i64;
            places.push(DocRef::parse(writer.encode(id, t).unwrap()).unwrap());
            chunks.extend(writer.take_closed().map(|(first, frame)| (first, read_frame(&frame))));
        }
        chunks.extend(writer.close().map(|(first, frame)| (first, read_frame(&frame))));
        assert!(chunks.len() >= 4, "{} chunks", chunks.len());
        assert_eq!(chunks[0].0, 100);
        for (k, (t, place)) in traces.iter().zip(&places).enumerate() {
            let (_, json) = chunks.iter().find(|(first, _)| *first == place.chunk).unwrap();
            let at = place.offset as usize..(place.offset + place.len) as usize;
            assert_eq!(json[at.clone()], rmp_serde::to_vec_named(t).unwrap()[..], "trace {k}");
            assert_eq!(&parse_body(&json[at]).unwrap(), t, "trace {k}");
        }
        for (first, json) in &chunks {
            assert!(json.len() <= CHUNK_BYTES, "chunk {first}: {} bytes", json.len());
            // A chunk starts at its first trace's doc.
            assert_eq!(places.iter().find(|p| p.chunk == *first).unwrap().offset, 0);
        }
        assert_eq!(DocRef::parse(b"RSDR too short"), None);
        assert_eq!(DocRef::parse(&[b'{'; 20]), None);
    }

    /// Each encoding's doc decodes to the trace; what is neither frame nor JSON is an error.
    #[test]
    fn every_encoding_decodes_and_garbage_is_refused() {
        let trace = crate::sample::summary_trace(9, 2_000);
        // (By size, a summary trace's doc is a reference into its chunk: the test above.)
        for encoding in [DocEncoding::Lz4, DocEncoding::Zstd, DocEncoding::Json] {
            let mut writer = DocWriter::new(encoding);
            // Twice, through the reused buffers.
            for id in 0..2 {
                let doc = writer.encode(id, &trace).unwrap().to_vec();
                assert_eq!(decode_doc(&doc).unwrap(), trace, "{encoding:?}");
            }
        }
        let mut lz4 = DocWriter::new(DocEncoding::Lz4).encode(1, &trace).unwrap().to_vec();
        lz4.truncate(lz4.len() / 2);
        assert!(decode_doc(&lz4).unwrap_err().starts_with("lz4: "));
        assert!(decode_doc(&ZSTD_MAGIC).unwrap_err().starts_with("zstd: "));
        assert!(decode_doc(b"not a doc").is_err());
    }
}
