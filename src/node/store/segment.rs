//! Segments and the items in them.
//!
//! An item is a 16-byte header, its key and its value, appended to a
//! segment and padded to 4 bytes (so an index entry can name it in 32
//! bits). Header, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | key length, 1–255; 0 in a jumbo segment (the lengths are the segment's) |
//! | 1 | access frequency, 0–3 (eviction keeps items read since their last pass); top bit: dead (no longer indexed) |
//! | 2..5 | value length (24 bits; a segment is at most 1 MiB) |
//! | 5..12 | ring epoch the item was written in (56 bits, saturating) |
//! | 12..16 | expiry second, 0 = never |
//!
//! A jumbo segment holds one item too large for a normal segment (or with
//! a key over 255 bytes), sized to fit it exactly.

/// Bytes of an item's header.
pub const HEADER: usize = 16;
/// Items start at multiples of this (index entries count in its units).
pub const ALIGN: usize = 4;
/// Largest normal segment: offsets in an index entry cover 1 MiB.
pub const MAX_SEGMENT: usize = 1 << 20;
/// Highest access frequency kept.
pub const MAX_FREQ: u8 = 3;
/// Marks an item no longer indexed (overwritten, deleted, expired), so a
/// walk over its segment skips it without asking the index.
const DEAD: u8 = 0x80;
/// Largest epoch an item stores; larger ones are stored as this, which
/// only ever makes an item look older (a read then goes to the tier).
pub const MAX_EPOCH: u64 = (1 << 56) - 1;

/// Bytes an item of `key_len` + `value_len` takes in a normal segment.
#[inline]
pub fn item_size(key_len: usize, value_len: usize) -> usize {
    (HEADER + key_len + value_len).next_multiple_of(ALIGN)
}

/// Marks "no segment" in links.
pub const NIL: u32 = u32::MAX;

/// One segment: its bytes, how far they are written, and its places in
/// the shard's age order and in its TTL bucket's chain.
#[derive(Debug)]
pub struct Segment {
    /// The bytes; empty while the segment is free.
    pub data: Box<[u8]>,
    /// Bytes written (items end here).
    pub used: u32,
    /// Bytes of the items written here that are still indexed.
    pub live: u32,
    /// TTL bucket.
    pub bucket: u16,
    /// In the main queue (items read while in the small one), not the small.
    pub main: bool,
    /// Holds one oversized item, whose lengths are these.
    pub jumbo: Option<(u32, u32)>,
    /// Latest expiry second among the items written here; `u32::MAX` if
    /// one never expires.
    pub max_expire: u32,
    /// Towards older segments in the shard's age order.
    pub older: u32,
    /// Towards newer segments.
    pub newer: u32,
    /// Previous segment in the bucket's chain (older).
    pub chain_prev: u32,
    /// Next segment in the bucket's chain (newer).
    pub chain_next: u32,
}

impl Segment {
    /// A free slot.
    pub fn free() -> Self {
        Segment {
            data: Box::default(),
            used: 0,
            live: 0,
            bucket: 0,
            main: false,
            jumbo: None,
            max_expire: 0,
            older: NIL,
            newer: NIL,
            chain_prev: NIL,
            chain_next: NIL,
        }
    }

    /// Bytes left for appending.
    pub fn room(&self) -> usize {
        self.data.len() - self.used as usize
    }

    /// The item at `offset`.
    #[inline]
    pub fn item(&self, offset: usize) -> Item<'_> {
        let h = &self.data[offset..offset + HEADER];
        let (key_len, value_len) = match self.jumbo {
            Some((k, v)) => (k as usize, v as usize),
            None => (
                h[0] as usize,
                u32::from_le_bytes([h[2], h[3], h[4], 0]) as usize,
            ),
        };
        Item {
            bytes: &self.data[offset..offset + HEADER + key_len + value_len],
            key_len,
        }
    }

    /// Marks the item at `offset` as no longer indexed.
    #[inline]
    pub fn kill(&mut self, offset: usize) {
        self.data[offset + 1] |= DEAD;
    }

    /// Raises the access frequency of the item at `offset` by one.
    #[inline]
    pub fn touch(&mut self, offset: usize) {
        let f = &mut self.data[offset + 1];
        if *f < MAX_FREQ {
            *f += 1;
        }
    }

    /// Writes an item at the end; returns its offset. The caller checked
    /// the room (normal segment) or sized the segment (jumbo).
    pub fn append(&mut self, key: &[u8], value: &[u8], expire: u32, epoch: u64) -> usize {
        let offset = self.used as usize;
        let size = match self.jumbo {
            Some(_) => self.data.len(),
            None => item_size(key.len(), value.len()),
        };
        let out = &mut self.data[offset..offset + size];
        if self.jumbo.is_none() {
            out[0] = key.len() as u8;
            out[2..5].copy_from_slice(&(value.len() as u32).to_le_bytes()[..3]);
        } else {
            out[0] = 0;
            out[2..5].fill(0);
        }
        out[1] = 0;
        out[5..12].copy_from_slice(&epoch.min(MAX_EPOCH).to_le_bytes()[..7]);
        out[12..16].copy_from_slice(&expire.to_le_bytes());
        out[HEADER..HEADER + key.len()].copy_from_slice(key);
        out[HEADER + key.len()..HEADER + key.len() + value.len()].copy_from_slice(value);
        self.used += size as u32;
        let expire = if expire == 0 { u32::MAX } else { expire };
        self.max_expire = self.max_expire.max(expire);
        offset
    }
}

/// An item, borrowed from its segment.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    bytes: &'a [u8],
    key_len: usize,
}

impl<'a> Item<'a> {
    /// The key.
    #[inline]
    pub fn key(&self) -> &'a [u8] {
        &self.bytes[HEADER..HEADER + self.key_len]
    }

    /// The value.
    #[inline]
    pub fn value(&self) -> &'a [u8] {
        &self.bytes[HEADER + self.key_len..]
    }

    /// Expiry second, 0 = never.
    #[inline]
    pub fn expire(&self) -> u32 {
        let b = &self.bytes[12..16];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Ring epoch it was written in.
    #[inline]
    pub fn epoch(&self) -> u64 {
        let b = &self.bytes[5..12];
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], 0])
    }

    /// Access frequency.
    #[inline]
    pub fn freq(&self) -> u8 {
        self.bytes[1] & !DEAD
    }

    /// Whether the item is no longer indexed.
    #[inline]
    pub fn is_dead(&self) -> bool {
        self.bytes[1] & DEAD != 0
    }

    /// Bytes it takes in a normal segment, padding included.
    #[inline]
    pub fn size(&self) -> usize {
        self.bytes.len().next_multiple_of(ALIGN)
    }
}

/// TTL buckets: items whose time to live falls in one bucket share
/// segments, so a segment's items expire at nearly the same time and the
/// segment goes whole (Segcache's layout: 8 s wide below 2,048 s, then
/// 128 s, 2,048 s and 32,768 s).
pub const BUCKETS: usize = 1024;

/// The bucket for an item with `ttl` seconds to live (0 = never).
pub fn bucket_of(ttl: u32) -> u16 {
    let b = match ttl {
        0 => 0,
        1..2048 => 1 + ttl / 8,
        2048..32_768 => 257 + (ttl - 2048) / 128,
        32_768..524_288 => 497 + (ttl - 32_768) / 2048,
        _ => 737 + ((ttl - 524_288) / 32_768).min(286),
    };
    b as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_through_a_segment() {
        let mut s = Segment::free();
        s.data = vec![0u8; 256].into_boxed_slice();
        let a = s.append(b"key", b"value", 7, 1 << 60);
        let b = s.append(b"k2", b"", 0, 42);
        assert_eq!((a, b), (0, item_size(3, 5)));
        let i = s.item(a);
        assert_eq!(
            (i.key(), i.value(), i.expire()),
            (&b"key"[..], &b"value"[..], 7)
        );
        assert_eq!(i.epoch(), MAX_EPOCH, "saturates: only ever older");
        assert_eq!(s.item(b).epoch(), 42);
        assert_eq!(s.item(b).value(), b"");
        assert_eq!(s.max_expire, u32::MAX);
        for _ in 0..5 {
            s.touch(a);
        }
        assert_eq!(s.item(a).freq(), MAX_FREQ);
        assert_eq!(s.item(b).freq(), 0);
        s.kill(a);
        assert!(s.item(a).is_dead() && !s.item(b).is_dead());
        assert_eq!(s.item(a).freq(), MAX_FREQ);
    }

    #[test]
    fn buckets_are_ordered_and_in_range() {
        let mut last = 0;
        for ttl in (0..2_000_000u32).step_by(97).chain([u32::MAX]) {
            let b = bucket_of(ttl);
            assert!(b >= last && (b as usize) < BUCKETS, "{ttl} -> {b}");
            last = b;
        }
        assert_eq!(bucket_of(0), 0);
        assert_ne!(bucket_of(1), 0);
    }
}
