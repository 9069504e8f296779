//! The distribution hash. A row's shard is chosen by hashing the memcomparable encoding of its
//! distribution column ([`crate::keycodec`]) to a `u32` and finding the shard whose hash range
//! contains it. Shards own contiguous ranges of the `u32` space (not `hash % n`), so a shard can
//! later split in two without moving rows of other shards.
//!
//! The function is FNV-1a (64-bit) followed by the MurmurHash3 64-bit finalizer, taking the high
//! 32 bits. It is part of the on-disk format: it **must not change** (see the stability test).

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Hash of an encoded distribution key.
pub fn hash_key(encoded: &[u8]) -> u32 {
    let mut h = FNV_OFFSET;
    for &b in encoded {
        h ^= b as u64;
        h = h.wrapping_mul(FNV_PRIME);
    }
    // murmur3 fmix64: spreads FNV's weak high bits
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h >> 32) as u32
}

/// Index of the shard (of `shard_count` equal ranges) that owns `hash`.
pub fn shard_for_hash(hash: u32, shard_count: u32) -> u32 {
    ((hash as u64 * shard_count as u64) >> 32) as u32
}

/// Inclusive `(min, max)` hash range of shard `index` of `shard_count`.
pub fn shard_hash_range(index: u32, shard_count: u32) -> (u32, u32) {
    let n = shard_count as u64;
    let lo = (index as u64 * (1u64 << 32)).div_ceil(n);
    let hi = ((index as u64 + 1) * (1u64 << 32)).div_ceil(n) - 1;
    (lo as u32, hi as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_partition_the_space() {
        for n in [1u32, 2, 3, 7, 32, 1000] {
            let mut next = 0u64;
            for i in 0..n {
                let (lo, hi) = shard_hash_range(i, n);
                assert_eq!(lo as u64, next);
                assert_eq!(shard_for_hash(lo, n), i);
                assert_eq!(shard_for_hash(hi, n), i);
                next = hi as u64 + 1;
            }
            assert_eq!(next, 1u64 << 32);
        }
    }

    /// Part of the on-disk format: changing these values strands existing rows in wrong shards.
    #[test]
    fn hash_is_stable() {
        assert_eq!(hash_key(b""), 4_023_394_144);
        assert_eq!(
            hash_key(&crate::keycodec::encode_key(&[&crate::datum::Datum::Int8(
                1
            )])),
            1_213_494_190
        );
    }

    #[test]
    fn sequential_keys_spread_evenly() {
        let mut counts = [0u32; 32];
        for i in 0..32_000i64 {
            let k = crate::keycodec::encode_key(&[&crate::datum::Datum::Int8(i)]);
            counts[shard_for_hash(hash_key(&k), 32) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven: {counts:?}");
        }
    }
}
