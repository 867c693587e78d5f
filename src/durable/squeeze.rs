//! LZ4 for values roomlog stores in sled: sealed packs of log records (`log::pack`) and the
//! history's pages. A compressed value starts with [`MARK`], the one byte MessagePack never
//! uses, so that a reader tells it from a value written before compression by its first byte.

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
    }
}
