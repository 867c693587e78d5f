//! Compression of values roomlog stores in sled: zstd for sealed packs of log records
//! (`log::pack`: a third smaller than LZ4 on chat text) and for the history's pages (two fifths
//! smaller); LZ4 where zstd fails, and for packs sealed before zstd. A compressed value starts
//! with [`MARK`], the one byte
//! MessagePack never uses, so that a reader tells it from a value written before compression
//! by its first byte.

/// First byte of a compressed value: never the first byte of a MessagePack value.
pub const MARK: u8 = 0xc1;

/// A stored value that says it is compressed but does not decompress.
#[derive(Debug, thiserror::Error)]
pub enum SqueezeError {
    #[error("it is cut short")]
    Short,
    #[error("it states {0} bytes decompressed, over the {1} any value of its kind has")]
    TooLarge(usize, usize),
    #[error("it does not decompress")]
    Damaged,
}

/// `plain` compressed, with its length before it (4 bytes, little-endian).
pub fn compress(plain: &[u8]) -> Vec<u8> {
    lz4_flex::compress_prepend_size(plain)
}

/// What [`compress`] made of a value of at most `max` bytes; a damaged length fails rather
/// than allocating it.
pub fn decompress(compressed: &[u8], max: usize) -> Result<Vec<u8>, SqueezeError> {
    let (size, body) = compressed.split_first_chunk::<4>().ok_or(SqueezeError::Short)?;
    let size = u32::from_le_bytes(*size) as usize;
    if size > max {
        return Err(SqueezeError::TooLarge(size, max));
    }
    lz4_flex::block::decompress(body, size).map_err(|_| SqueezeError::Damaged)
}

/// zstd's level for [`compress_dense`]: level 1 keeps nearly all of level 3's gain on chat text
/// (0.276 against 0.270 of the text on the corpus) at level 1's speed.
const DENSE_LEVEL: i32 = 1;

thread_local! {
    // zstd's contexts, one per thread and kept: making one costs more than a pack's
    // compression or decompression (a rebuild reads a pack every 64 records).
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> = const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { std::cell::RefCell::new(None) };
}

/// `plain` compressed with zstd, in one frame that states its size; `None` if zstd fails (the
/// caller then stores it with [`compress`]).
pub fn compress_dense(plain: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|kept| {
        if kept.is_none() {
            *kept = Some(zstd::bulk::Compressor::new(DENSE_LEVEL).ok()?);
        }
        kept.as_mut()?.compress(plain).ok()
    })
}

/// What [`compress_dense`] made of a value of at most `max` bytes; a frame stating more fails
/// rather than allocating it.
pub fn decompress_dense(compressed: &[u8], max: usize) -> Result<Vec<u8>, SqueezeError> {
    let size = match zstd::zstd_safe::get_frame_content_size(compressed) {
        Ok(Some(size)) if size > max as u64 => return Err(SqueezeError::TooLarge(size as usize, max)),
        Ok(Some(size)) => size as usize,
        _ => return Err(SqueezeError::Damaged),
    };
    // zstd allocates what it is given room for: the frame's own size, checked above.
    let plain = DECOMPRESSOR.with_borrow_mut(|kept| {
        if kept.is_none() {
            *kept = Some(zstd::bulk::Decompressor::new().map_err(|_| SqueezeError::Damaged)?);
        }
        let decompressor = kept.as_mut().ok_or(SqueezeError::Damaged)?;
        decompressor.decompress(compressed, size).map_err(|_| SqueezeError::Damaged)
    })?;
    if plain.len() == size {
        Ok(plain)
    } else {
        Err(SqueezeError::Damaged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_back_and_damage_is_an_error() {
        let plain = b"the same words, the same words, the same words".repeat(20);
        let packed = compress(&plain);
        assert!(packed.len() < plain.len() / 4);
        assert_eq!(decompress(&packed, plain.len()).expect("decompresses"), plain);
        assert!(matches!(decompress(&packed, 10), Err(SqueezeError::TooLarge(_, 10))));
        assert!(matches!(decompress(&packed[..3], 1 << 20), Err(SqueezeError::Short)));
        assert!(decompress(&packed[..packed.len() - 3], 1 << 20).is_err());

        let dense = compress_dense(&plain).expect("zstd compresses");
        assert_eq!(decompress_dense(&dense, plain.len()).expect("decompresses"), plain);
        assert!(matches!(decompress_dense(&dense, 10), Err(SqueezeError::TooLarge(_, 10))));
        assert!(decompress_dense(&dense[..3], 1 << 20).is_err());
        assert!(decompress_dense(&dense[..dense.len() - 3], 1 << 20).is_err());
    }
}
