//! What to send: the key space, its distribution, the get/set mix and the
//! value sizes. Deterministic from a seed, so runs against different
//! targets see the same operations.

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Zipf};

/// How keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// Rank r drawn with probability ∝ 1/r^s.
    Zipf(f64),
}

impl std::str::FromStr for KeyDist {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "uniform" {
            return Ok(KeyDist::Uniform);
        }
        let exp = s
            .strip_prefix("zipf:")
            .or_else(|| (s == "zipf").then_some("0.99"))
            .ok_or_else(|| format!("'{s}': use uniform or zipf:EXPONENT"))?;
        let e: f64 = exp
            .parse()
            .map_err(|_| format!("'{exp}' is not a Zipf exponent"))?;
        if !(e > 0.0 && e.is_finite()) {
            return Err(format!("Zipf exponent must be positive, got {e}"));
        }
        Ok(KeyDist::Zipf(e))
    }
}

/// Value sizes: fixed or uniform in a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueSize {
    /// Smallest size.
    pub min: usize,
    /// Largest size.
    pub max: usize,
}

impl std::str::FromStr for ValueSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parse = |x: &str| {
            x.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{s}' is not a size or MIN-MAX"))
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => (parse(s)?, parse(s)?),
        };
        if min > max || max > 64 << 20 {
            return Err(format!("'{s}': need MIN <= MAX <= 64 MiB"));
        }
        Ok(ValueSize { min, max })
    }
}

/// The get:set mix, e.g. `9:1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    /// Gets per cycle.
    pub gets: u32,
    /// Sets per cycle.
    pub sets: u32,
}

impl std::str::FromStr for Ratio {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (g, p) = s
            .split_once(':')
            .ok_or_else(|| format!("'{s}': use GET:SET, e.g. 9:1"))?;
        let gets = g.parse().map_err(|_| format!("'{g}' is not a count"))?;
        let sets = p.parse().map_err(|_| format!("'{p}' is not a count"))?;
        if gets == 0 && sets == 0 {
            return Err("the ratio needs at least one get or set".into());
        }
        Ok(Ratio { gets, sets })
    }
}

/// One operation to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Read key `n`.
    Get(u64),
    /// Write key `n` with a value of this many bytes.
    Set(u64, usize),
}

/// Draws operations.
pub struct Generator {
    rng: SmallRng,
    zipf: Option<Zipf<f64>>,
    keys: u64,
    ratio: Ratio,
    values: ValueSize,
}

impl Generator {
    /// A generator over `keys` keys.
    pub fn new(keys: u64, dist: KeyDist, ratio: Ratio, values: ValueSize, seed: u64) -> Self {
        let zipf = match dist {
            KeyDist::Uniform => None,
            KeyDist::Zipf(s) => Zipf::new(keys.max(1) as f64, s).ok(),
        };
        Generator {
            rng: SmallRng::seed_from_u64(seed),
            zipf,
            keys: keys.max(1),
            ratio,
            values,
        }
    }

    /// A key index: rank 0 is the most popular under Zipf. Ranks are
    /// scattered over the key space so hot keys are not neighbours.
    pub fn key(&mut self) -> u64 {
        let rank = match &self.zipf {
            Some(z) => (z.sample(&mut self.rng) as u64).saturating_sub(1),
            None => self.rng.random_range(0..self.keys),
        };
        scatter(rank, self.keys)
    }

    /// A value size.
    pub fn value_size(&mut self) -> usize {
        if self.values.min == self.values.max {
            self.values.min
        } else {
            self.rng.random_range(self.values.min..=self.values.max)
        }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let cycle = self.ratio.gets + self.ratio.sets;
        let key = self.key();
        if self.rng.random_range(0..cycle) < self.ratio.gets {
            Op::Get(key)
        } else {
            Op::Set(key, self.value_size())
        }
    }
}

/// A bijection of `0..n` (multiplication by an odd constant modulo the
/// next power of two, cycle-walked back into range).
pub fn scatter(rank: u64, n: u64) -> u64 {
    let m = n.next_power_of_two();
    let mut x = rank;
    loop {
        x = x.wrapping_mul(0x9E37_79B9_7F4A_7C15) & (m - 1);
        if x < n {
            return x;
        }
    }
}

/// The bytes of key `n`, `size` long: `key:` then the zero-padded number.
pub fn key_bytes(n: u64, size: usize, out: &mut Vec<u8>) {
    let digits = format!("{n}");
    let size = size.max(digits.len() + 4);
    out.extend_from_slice(b"key:");
    out.resize(out.len() + size - 4 - digits.len(), b'0');
    out.extend_from_slice(digits.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing() {
        assert_eq!("uniform".parse(), Ok(KeyDist::Uniform));
        assert_eq!("zipf:1.2".parse(), Ok(KeyDist::Zipf(1.2)));
        assert!("zipf:-1".parse::<KeyDist>().is_err());
        assert_eq!("100".parse(), Ok(ValueSize { min: 100, max: 100 }));
        assert_eq!("10-20".parse(), Ok(ValueSize { min: 10, max: 20 }));
        assert!("20-10".parse::<ValueSize>().is_err());
        assert_eq!("9:1".parse(), Ok(Ratio { gets: 9, sets: 1 }));
        assert!("0:0".parse::<Ratio>().is_err());
    }

    #[test]
    fn keys_have_the_requested_size() {
        let mut k = Vec::new();
        key_bytes(42, 32, &mut k);
        assert_eq!(k.len(), 32);
        assert!(k.starts_with(b"key:000"));
        assert!(k.ends_with(b"42"));
    }

    #[test]
    fn scatter_is_a_permutation() {
        for n in [1u64, 7, 100, 1000] {
            let mut seen = vec![false; n as usize];
            for r in 0..n {
                let x = scatter(r, n) as usize;
                assert!(!seen[x]);
                seen[x] = true;
            }
        }
    }

    /// Zipf(1.0) over 1000 keys: rank 1 has probability 1/H(1000) ≈ 0.1336,
    /// rank 2 half that; uniform spreads evenly.
    #[test]
    fn zipf_sampler_has_the_right_shape() {
        let n = 1000u64;
        let draws = 200_000;
        let ratio = Ratio { gets: 1, sets: 0 };
        let vs = ValueSize { min: 1, max: 1 };
        let mut g = Generator::new(n, KeyDist::Zipf(1.0), ratio, vs, 7);
        let mut counts = vec![0u32; n as usize];
        for _ in 0..draws {
            counts[g.key() as usize] += 1;
        }
        let h: f64 = (1..=n).map(|r| 1.0 / r as f64).sum();
        let p1 = counts[scatter(0, n) as usize] as f64 / draws as f64;
        let p2 = counts[scatter(1, n) as usize] as f64 / draws as f64;
        assert!((p1 - 1.0 / h).abs() < 0.01, "p1 = {p1}");
        assert!((p2 - 0.5 / h).abs() < 0.01, "p2 = {p2}");
        let mut u = Generator::new(n, KeyDist::Uniform, ratio, vs, 7);
        let mut uc = vec![0u32; n as usize];
        for _ in 0..draws {
            uc[u.key() as usize] += 1;
        }
        let max = *uc.iter().max().unwrap_or(&0) as f64;
        assert!(
            max / (draws as f64 / n as f64) < 1.5,
            "uniform max/mean {max}"
        );
    }

    #[test]
    fn the_mix_follows_the_ratio() {
        let mut g = Generator::new(
            100,
            KeyDist::Uniform,
            Ratio { gets: 9, sets: 1 },
            ValueSize { min: 10, max: 20 },
            1,
        );
        let sets = (0..100_000)
            .filter(|_| matches!(g.next_op(), Op::Set(_, 10..=20)))
            .count();
        assert!((9_000..11_000).contains(&sets), "{sets}");
    }
}
