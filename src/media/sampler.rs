//! Which frames of a camera to decode.
//!
//! When the sample interval is at least one GOP, only keyframes are decoded: a keyframe is
//! sampled once the interval less half a GOP has passed since the last sample (keyframe
//! timing jitters, and an exact comparison drifts towards one GOP more per sample). When the interval is shorter
//! than a GOP, the frames since the last keyframe are kept and, once the interval has passed,
//! handed over as one job whose last picture is the sample ("decode and drop").

use bytes::Bytes;

/// Sampling state of one camera; timestamps are in the stream's clock ticks.
pub struct Sampler {
    interval: i64,
    gop: Option<i64>,
    last_key: Option<i64>,
    last_sample: Option<i64>,
    phase: i64,
    first_ts: Option<i64>,
    since_key: Vec<Bytes>,
}

/// Share of the interval after which a keyframe counts as due.
const TOLERANCE: f64 = 0.9;

impl Sampler {
    /// A sampler taking one frame per `interval_ticks`.
    pub fn new(interval_ticks: i64) -> Sampler {
        Self::with_phase(interval_ticks, 0)
    }

    /// A sampler whose first sample comes `phase_ticks` after the first keyframe. Cameras
    /// that connect together (after a restart, or replaying one stream) would otherwise
    /// send their samples to the decoder pool in the same instant, every interval.
    pub fn with_phase(interval_ticks: i64, phase_ticks: i64) -> Sampler {
        Sampler {
            interval: interval_ticks.max(1),
            gop: None,
            last_key: None,
            last_sample: None,
            phase: phase_ticks.max(0),
            first_ts: None,
            since_key: Vec::new(),
        }
    }

    /// Whether only keyframes are decoded (the interval is at least the measured GOP).
    pub fn keyframes_only(&self) -> bool {
        self.gop
            .is_none_or(|g| self.interval as f64 >= g as f64 * TOLERANCE)
    }

    /// The measured keyframe interval in ticks.
    pub fn gop(&self) -> Option<i64> {
        self.gop
    }

    /// Forgets timing after a reconnect (timestamps restart).
    pub fn reset(&mut self) {
        self.first_ts = None;
        self.last_key = None;
        self.last_sample = None;
        self.since_key.clear();
    }

    /// Feeds one access unit; returns the frames to decode when a sample is due.
    pub fn on_frame(&mut self, ts: i64, is_key: bool, data: &Bytes) -> Option<Vec<Bytes>> {
        if is_key {
            if let Some(prev) = self.last_key
                && ts > prev
            {
                self.gop = Some(ts - prev);
            }
            self.last_key = Some(ts);
            self.since_key.clear();
        }
        // Nothing is decodable before the first keyframe.
        self.last_key?;
        // Keyframes arrive once per GOP, give or take jitter: half a GOP of slack keeps an
        // interval of N GOPs at N GOPs (an exact comparison drifts to N + 1).
        let slack = match self.gop {
            Some(g) if self.keyframes_only() => (g.min(self.interval) / 2) as f64,
            _ => self.interval as f64 * (1.0 - TOLERANCE),
        };
        let first = *self.first_ts.get_or_insert(ts);
        let due = match self.last_sample {
            None => ts - first >= self.phase || ts < first,
            Some(last) if ts < last => true, // timestamps went backwards: start over
            Some(last) => (ts - last) as f64 >= self.interval as f64 - slack,
        };
        if self.keyframes_only() {
            if is_key && due {
                self.last_sample = Some(ts);
                return Some(vec![data.clone()]);
            }
            return None;
        }
        self.since_key.push(data.clone());
        if due {
            self.last_sample = Some(ts);
            return Some(self.since_key.clone());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `secs` of a 15 fps stream with a keyframe every `gop` frames through a sampler
    /// with interval `interval_frames`; returns (frame index, job length) per sample.
    fn run(gop: i64, interval_frames: i64, frames: i64) -> Vec<(i64, usize)> {
        let tick = 6000; // 90 kHz / 15 fps
        let mut s = Sampler::new(interval_frames * tick);
        let data = Bytes::from_static(b"au");
        (0..frames)
            .filter_map(|i| {
                s.on_frame(i * tick, i % gop == 0, &data)
                    .map(|j| (i, j.len()))
            })
            .collect()
    }

    #[test]
    fn interval_of_several_gops_samples_keyframes_only() {
        // 1 s GOP, 10 s interval, 60 s: one keyframe every 10 s.
        let samples = run(15, 150, 900);
        assert_eq!(samples.len(), 6);
        assert!(samples.iter().all(|&(i, n)| i % 15 == 0 && n == 1));
        assert_eq!(samples[1].0 - samples[0].0, 150);
    }

    #[test]
    fn interval_equal_to_gop_does_not_drift() {
        let samples = run(15, 15, 300);
        assert_eq!(samples.len(), 20);
    }

    #[test]
    fn interval_shorter_than_gop_decodes_a_prefix() {
        // 2 s GOP, 0.5 s interval: 4 samples per GOP, jobs start at a keyframe.
        let samples = run(30, 7, 300);
        assert!(samples.len() >= 35, "{samples:?}");
        assert!(samples.iter().any(|&(_, n)| n > 1));
        for &(i, n) in &samples[2..] {
            assert_eq!(n as i64, i % 30 + 1, "job must start at the keyframe");
        }
    }

    #[test]
    fn phase_delays_the_first_sample() {
        let tick = 6000;
        let mut s = Sampler::with_phase(150 * tick, 40 * tick);
        let d = Bytes::from_static(b"x");
        let first = (0..300).find(|i| s.on_frame(i * tick, i % 15 == 0, &d).is_some());
        assert_eq!(first, Some(45), "first keyframe at or after the phase");
    }

    #[test]
    fn nothing_before_first_keyframe() {
        let mut s = Sampler::new(1);
        let d = Bytes::from_static(b"x");
        assert!(s.on_frame(0, false, &d).is_none());
        assert!(s.on_frame(10, true, &d).is_some());
    }
}
