//! Samples, their summary (median and p95) and how they print.

use std::time::Duration;

/// Timings of one figure, one side (ours or the floor).
#[derive(Clone, Debug, Default)]
pub struct Samples(Vec<Duration>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut v = self.0.clone();
        v.sort();
        v
    }

    /// The median (mean of the two middle samples when their number is even).
    pub fn median(&self) -> Duration {
        let v = self.sorted();
        match v.len() {
            0 => Duration::ZERO,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2,
        }
    }

    /// The 95th percentile, nearest rank: with fewer than 20 samples this is the maximum.
    pub fn p95(&self) -> Duration {
        let v = self.sorted();
        if v.is_empty() {
            return Duration::ZERO;
        }
        let rank = (v.len() * 95).div_ceil(100).max(1);
        v[rank - 1]
    }
}

/// Milliseconds, with more decimals for short times.
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

pub fn ratio(ours: Duration, floor: Duration) -> f64 {
    if floor.is_zero() {
        f64::NAN
    } else {
        ours.as_secs_f64() / floor.as_secs_f64()
    }
}

pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(ms: &[u64]) -> Samples {
        let mut s = Samples::default();
        for &m in ms {
            s.push(Duration::from_millis(m));
        }
        s
    }

    #[test]
    fn median_and_p95() {
        let s = samples(&[5, 1, 3, 2, 4]);
        assert_eq!(s.median(), Duration::from_millis(3));
        assert_eq!(s.p95(), Duration::from_millis(5));
        let s = samples(&[4, 1, 3, 2]);
        assert_eq!(s.median(), Duration::from_micros(2500));
        let s = samples(&(1..=20).collect::<Vec<_>>());
        assert_eq!(s.p95(), Duration::from_millis(19));
        assert_eq!(Samples::default().median(), Duration::ZERO);
    }
}
