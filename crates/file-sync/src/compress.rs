//! Per-chunk compression that is used only where it pays.
//!
//! Each chunk is compressed with zstd at level 1 and sent compressed only if
//! that saves at least a tenth of its size. After a few chunks in a row that
//! did not shrink (media, archives, random data), the encoder only probes one
//! chunk in sixteen, so incompressible files cost almost no CPU.

use std::cell::RefCell;

use crate::proto::Compression;

/// zstd level: fast enough to beat a gigabit link and loopback copies alike.
const LEVEL: i32 = 1;
/// Chunks smaller than this are always sent raw.
const MIN_LEN: usize = 512;
/// Consecutive misses after which the encoder only probes now and then.
const MISSES_BEFORE_BACKOFF: u32 = 4;
const PROBE_EVERY: u32 = 16;

/// Decides, chunk by chunk, whether to compress one download.
#[derive(Debug)]
pub struct ChunkEncoder {
    enabled: bool,
    misses: u32,
    skipped: u32,
}

impl ChunkEncoder {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            misses: 0,
            skipped: 0,
        }
    }

    /// Returns the bytes to send and how they are encoded.
    pub fn encode(&mut self, raw: Vec<u8>) -> (Vec<u8>, Compression) {
        if !self.enabled || raw.len() < MIN_LEN {
            return (raw, Compression::None);
        }
        if self.misses >= MISSES_BEFORE_BACKOFF {
            self.skipped += 1;
            if self.skipped < PROBE_EVERY {
                return (raw, Compression::None);
            }
            self.skipped = 0;
        }
        match compress_chunk(&raw) {
            Ok(packed) if packed.len() <= raw.len() - raw.len() / 10 => {
                self.misses = 0;
                (packed, Compression::Zstd)
            }
            _ => {
                self.misses += 1;
                (raw, Compression::None)
            }
        }
    }
}

thread_local! {
    // One zstd context per thread, reused chunk after chunk: creating one
    // per chunk costs more than compressing a small chunk.
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

fn compress_chunk(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let ctx = match cell.as_mut() {
            Some(ctx) => ctx,
            None => cell.insert(zstd::bulk::Compressor::new(LEVEL)?),
        };
        ctx.compress(raw)
    })
}

fn decompress_chunk(data: &[u8], raw_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let ctx = match cell.as_mut() {
            Some(ctx) => ctx,
            None => cell.insert(zstd::bulk::Decompressor::new()?),
        };
        ctx.decompress(data, raw_len)
    })
}

/// Decodes one chunk, refusing one whose decoded length is not `raw_len`.
pub fn decode(data: Vec<u8>, compression: Compression, raw_len: usize) -> Result<Vec<u8>, String> {
    let out = match compression {
        Compression::None => data,
        Compression::Zstd => decompress_chunk(&data, raw_len)
            .map_err(|e| format!("zstd chunk does not decode: {e}"))?,
    };
    if out.len() != raw_len {
        return Err(format!(
            "chunk decodes to {} bytes, header says {raw_len}",
            out.len()
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn text_is_compressed_and_round_trips() {
        let text = b"import scrapy\nclass Quotes(scrapy.Spider):\n    pass\n".repeat(2000);
        let mut enc = ChunkEncoder::new(true);
        let (packed, how) = enc.encode(text.clone());
        assert_eq!(how, Compression::Zstd);
        assert!(packed.len() < text.len() / 5);
        assert_eq!(decode(packed, how, text.len()).unwrap(), text);
    }

    #[test]
    fn incompressible_data_is_sent_raw_and_probed_rarely() {
        let mut enc = ChunkEncoder::new(true);
        let data = noise(64 * 1024);
        for _ in 0..40 {
            let (out, how) = enc.encode(data.clone());
            assert_eq!(how, Compression::None);
            assert_eq!(out, data);
        }
        assert!(enc.misses < 10, "probed {} times in 40 chunks", enc.misses);
    }

    #[test]
    fn disabled_or_tiny_chunks_stay_raw() {
        let text = b"aaaa".repeat(1000);
        assert_eq!(ChunkEncoder::new(false).encode(text).1, Compression::None);
        assert_eq!(
            ChunkEncoder::new(true).encode(b"aaaa".to_vec()).1,
            Compression::None
        );
    }

    #[test]
    fn a_chunk_of_the_wrong_length_is_refused() {
        assert!(decode(vec![1, 2, 3], Compression::None, 4).is_err());
        let packed = zstd::bulk::compress(&[7u8; 1000], 1).unwrap();
        assert!(decode(packed, Compression::Zstd, 999).is_err());
    }
}
