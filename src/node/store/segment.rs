//! Segments and the items in them.
//!
//! An item is a 12-byte header, its key and its value, appended to a
//! segment and padded to 4 bytes (so an index entry can name it in 32
//! bits). Header, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0 | key length, 1–255; 0 in a jumbo segment (the lengths are the segment's) |
//! | 1..4 | value length (bits 0–19; a normal segment is at most 1 MiB), access frequency 0–3 (bits 20–21: eviction keeps items read since their last pass), dead (bit 23: no longer indexed) |
//! | 4..8 | ring epoch the item was written in, over the segment's base epoch |
//! | 8..12 | expiry second, 0 = never |
//!
//! The ring epoch (a time in microseconds or an etcd revision) takes 8
//! bytes; the items of one segment are written close together, so the
//! segment keeps its first item's epoch and each item the 32-bit
//! difference (71 minutes of microseconds). An item whose epoch does not
//! fit goes to another segment: every epoch is stored exactly.
//!
//! A jumbo segment holds one item too large for a normal segment (or with
//! a key over 255 bytes), sized to fit it exactly.

/// Bytes of an item's header.
pub const HEADER: usize = 12;
/// Items start at multiples of this (index entries count in its units).
pub const ALIGN: usize = 4;
/// Largest normal segment: offsets in an index entry cover 1 MiB.
pub const MAX_SEGMENT: usize = 1 << 20;
/// Highest access frequency kept.
pub const MAX_FREQ: u8 = 3;
/// In header byte 3: marks an item no longer indexed (overwritten,
/// deleted, expired), so a walk over its segment skips it without asking
/// the index.
const DEAD: u8 = 0x80;
/// In header byte 3: the access frequency's place.
const FREQ_SHIFT: u8 = 4;
const FREQ_MASK: u8 = 0x30;
/// Value length bits of header bytes 1..4.
const VLEN_MASK: u32 = (1 << 20) - 1;

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
    /// Ring epoch of the first item written; items store theirs over it.
    pub epoch_base: u64,
    /// Its places in the shard's age order ([`AGE`]) and in its TTL
    /// bucket's chain ([`CHAIN`]).
    pub links: [Link; 2],
}

/// A segment's neighbours in one of the shard's lists (oldest first).
#[derive(Debug, Clone, Copy)]
pub struct Link {
    /// Towards the older end.
    pub prev: u32,
    /// Towards the newer end.
    pub next: u32,
}

/// The list of a queue's segments in age order.
pub const AGE: usize = 0;
/// The list of a TTL bucket's segments.
pub const CHAIN: usize = 1;

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
            epoch_base: 0,
            links: [Link {
                prev: NIL,
                next: NIL,
            }; 2],
        }
    }

    /// Bytes left for appending.
    pub fn room(&self) -> usize {
        self.data.len() - self.used as usize
    }

    /// Whether an item of ring epoch `epoch` can be written here: the
    /// segment is empty, or the epoch is at most 32 bits over its base.
    #[inline]
    pub fn accepts(&self, epoch: u64) -> bool {
        self.used == 0
            || epoch
                .checked_sub(self.epoch_base)
                .is_some_and(|d| d <= u64::from(u32::MAX))
    }

    /// The item at `offset`.
    #[inline]
    pub fn item(&self, offset: usize) -> Item<'_> {
        let h = &self.data[offset..offset + HEADER];
        let (key_len, value_len) = match self.jumbo {
            Some((k, v)) => (k as usize, v as usize),
            None => (
                h[0] as usize,
                (u32::from_le_bytes([h[1], h[2], h[3], 0]) & VLEN_MASK) as usize,
            ),
        };
        Item {
            bytes: &self.data[offset..offset + HEADER + key_len + value_len],
            key_len,
            epoch_base: self.epoch_base,
        }
    }

    /// Marks the item at `offset` as no longer indexed.
    #[inline]
    pub fn kill(&mut self, offset: usize) {
        self.data[offset + 3] |= DEAD;
    }

    /// Raises the access frequency of the item at `offset` by one.
    #[inline]
    pub fn touch(&mut self, offset: usize) {
        let b = &mut self.data[offset + 3];
        let f = (*b & FREQ_MASK) >> FREQ_SHIFT;
        if f < MAX_FREQ {
            *b = (*b & !FREQ_MASK) | ((f + 1) << FREQ_SHIFT);
        }
    }

    /// Sets the access frequency of the item at `offset`.
    #[inline]
    pub fn set_freq(&mut self, offset: usize, freq: u8) {
        let b = &mut self.data[offset + 3];
        *b = (*b & !FREQ_MASK) | ((freq.min(MAX_FREQ)) << FREQ_SHIFT);
    }

    /// Writes an item at the end; returns its offset. The caller checked
    /// the room (normal segment) or sized the segment (jumbo), and that
    /// the segment [`accepts`](Segment::accepts) the epoch.
    pub fn append(&mut self, key: &[u8], value: &[u8], expire: u32, epoch: u64) -> usize {
        debug_assert!(self.accepts(epoch));
        if self.used == 0 {
            self.epoch_base = epoch;
        }
        let offset = self.used as usize;
        let size = match self.jumbo {
            Some(_) => self.data.len(),
            None => item_size(key.len(), value.len()),
        };
        let out = &mut self.data[offset..offset + size];
        if self.jumbo.is_none() {
            out[0] = key.len() as u8;
            out[1..4].copy_from_slice(&(value.len() as u32 & VLEN_MASK).to_le_bytes()[..3]);
        } else {
            out[0..4].fill(0);
        }
        let delta = epoch
            .saturating_sub(self.epoch_base)
            .min(u64::from(u32::MAX)) as u32;
        out[4..8].copy_from_slice(&delta.to_le_bytes());
        out[8..12].copy_from_slice(&expire.to_le_bytes());
        out[HEADER..HEADER + key.len()].copy_from_slice(key);
        out[HEADER + key.len()..HEADER + key.len() + value.len()].copy_from_slice(value);
        self.used += size as u32;
        self.note_expiry(expire);
        offset
    }

    /// Copies the live item at `offset` of `src` (`size` bytes, padding
    /// included) to the end of this normal segment with frequency `freq`;
    /// returns its new offset. The caller checked the room and that this
    /// segment [`accepts`](Segment::accepts) the item's epoch.
    pub fn copy_item(&mut self, src: &Segment, offset: usize, size: usize, freq: u8) -> usize {
        let item = src.item(offset);
        let epoch = item.epoch();
        debug_assert!(self.jumbo.is_none() && self.accepts(epoch));
        if self.used == 0 {
            self.epoch_base = epoch;
        }
        let at = self.used as usize;
        self.data[at..at + size].copy_from_slice(&src.data[offset..offset + size]);
        let delta = (epoch - self.epoch_base) as u32;
        self.data[at + 4..at + 8].copy_from_slice(&delta.to_le_bytes());
        self.set_freq(at, freq);
        self.used += size as u32;
        self.live += size as u32;
        self.note_expiry(item.expire());
        at
    }

    fn note_expiry(&mut self, expire: u32) {
        let expire = if expire == 0 { u32::MAX } else { expire };
        self.max_expire = self.max_expire.max(expire);
    }
}

/// An item, borrowed from its segment.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    bytes: &'a [u8],
    key_len: usize,
    epoch_base: u64,
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
        let b = &self.bytes[8..12];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Ring epoch it was written in.
    #[inline]
    pub fn epoch(&self) -> u64 {
        let b = &self.bytes[4..8];
        self.epoch_base + u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Access frequency.
    #[inline]
    pub fn freq(&self) -> u8 {
        (self.bytes[3] & FREQ_MASK) >> FREQ_SHIFT
    }

    /// Whether the item is no longer indexed.
    #[inline]
    pub fn is_dead(&self) -> bool {
        self.bytes[3] & DEAD != 0
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
        let base = 1 << 60;
        let a = s.append(b"key", b"value", 7, base);
        assert!(s.accepts(base + u64::from(u32::MAX)));
        assert!(
            !s.accepts(base + u64::from(u32::MAX) + 1),
            "32 bits over the base"
        );
        assert!(!s.accepts(base - 1), "nothing under the base");
        let b = s.append(b"k2", b"", 0, base + 42);
        assert_eq!((a, b), (0, item_size(3, 5)));
        let i = s.item(a);
        assert_eq!(
            (i.key(), i.value(), i.expire(), i.epoch()),
            (&b"key"[..], &b"value"[..], 7, base)
        );
        assert_eq!(s.item(b).epoch(), base + 42);
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
        assert_eq!(s.item(a).value(), b"value", "flags leave the length alone");
    }

    #[test]
    fn a_copy_keeps_the_epoch_over_another_base() {
        let mut src = Segment::free();
        src.data = vec![0u8; 256].into_boxed_slice();
        let long = vec![7u8; (1 << 20) - 100];
        let mut big = Segment::free();
        big.data = vec![0u8; 1 << 20].into_boxed_slice();
        let at = big.append(b"k", &long, 9, 5);
        assert_eq!(big.item(at).value().len(), long.len(), "20-bit lengths");
        let off = src.append(b"key", b"value", 9, 1_000_000);
        src.touch(off);
        let mut dst = Segment::free();
        dst.data = vec![0u8; 256].into_boxed_slice();
        dst.append(b"other", b"x", 0, 999_000);
        assert!(dst.accepts(1_000_000));
        let size = src.item(off).size();
        let to = dst.copy_item(&src, off, size, 0);
        let moved = dst.item(to);
        assert_eq!(
            (
                moved.key(),
                moved.value(),
                moved.epoch(),
                moved.expire(),
                moved.freq()
            ),
            (&b"key"[..], &b"value"[..], 1_000_000, 9, 0)
        );
        assert_eq!(dst.max_expire, u32::MAX);
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
