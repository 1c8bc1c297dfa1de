//! The embedded store's vector index: every distinct text's embedding, scanned quantised to
//! 8 bits, with exact similarities computed only where the quantisation error could change
//! the order, so the ranking is the exact one.

use std::collections::HashMap;

/// Every distinct text's embedding, row by row: as given, for exact similarities, and
/// quantised to i8 for the scan over all of them, which then reads a quarter of the memory
/// (over the 6235 texts of the 1M-insight bench: 0.25 ms, against 2 ms for the plain f32 loop).
#[derive(Default)]
pub(super) struct Vectors {
    pub(super) ids: Vec<i64>,
    pub(super) by_body: HashMap<String, i64>,
    pub(super) data: Vec<f32>,
    /// Row r of `data` is about `scales[r] * codes[r]`: each value within half a step.
    pub(super) codes: Vec<i8>,
    pub(super) scales: Vec<f32>,
    /// Sum of the magnitudes of each row of `data`, for the error bound of a quantised score.
    pub(super) l1: Vec<f32>,
    pub(super) dim: usize,
    /// Rows of `texts` up to this id have been read from the database. Only
    /// [`SqliteInsights::refresh_vectors`] moves it: texts this process adds are pushed as
    /// they are written, but a lower id committed by another process may not be loaded yet.
    pub(super) loaded_upto: i64,
}

impl Vectors {
    pub(super) fn push(&mut self, id: i64, body: String, v: &[f32]) {
        if self.dim == 0 {
            self.dim = v.len();
        }
        if v.len() != self.dim || self.by_body.contains_key(&body) {
            return;
        }
        self.ids.push(id);
        self.by_body.insert(body, id);
        self.data.extend_from_slice(v);
        self.scales.push(quantise(v, &mut self.codes));
        self.l1.push(v.iter().map(|x| x.abs()).sum());
    }

    pub(super) fn rows(&self) -> usize {
        self.ids.len()
    }

    pub(super) fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }

    pub(super) fn codes(&self, r: usize) -> &[i8] {
        &self.codes[r * self.dim..(r + 1) * self.dim]
    }
}

/// `v` as steps of one scale (the largest magnitude is 127 steps), appended to `codes`; the
/// scale. A row of zeros (or one that is not finite) gets scale 0 and codes 0.
pub(super) fn quantise(v: &[f32], codes: &mut Vec<i8>) -> f32 {
    let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    let scale = if max > 0.0 && max.is_finite() {
        max / 127.0
    } else {
        0.0
    };
    codes.extend(v.iter().map(|x| {
        if scale > 0.0 {
            (x / scale).round() as i8
        } else {
            0
        }
    }));
    scale
}

/// Lanes of the dot products: wide enough for LLVM to fill the SIMD registers, with
/// independent sums (a float sum in one accumulator cannot be reordered into lanes).
pub(super) const LANES: usize = 16;

pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a16, a_rest) = a.as_chunks::<LANES>();
    let (b16, b_rest) = b.as_chunks::<LANES>();
    let mut acc = [0.0f32; LANES];
    for (x, y) in a16.iter().zip(b16) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let rest: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + rest
}

/// Exact: at most 127 * 127 * the dimension, far inside an i32. Kept out of line: inlined
/// into the scan's loop, LLVM left it scalar (4 times slower).
#[inline(never)]
pub(super) fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    let (a16, a_rest) = a.as_chunks::<LANES>();
    let (b16, b_rest) = b.as_chunks::<LANES>();
    let mut acc = [0i32; LANES];
    for (x, y) in a16.iter().zip(b16) {
        for i in 0..LANES {
            acc[i] += i32::from(x[i]) * i32::from(y[i]);
        }
    }
    let rest: i32 = a_rest
        .iter()
        .zip(b_rest)
        .map(|(x, y)| i32::from(*x) * i32::from(*y))
        .sum();
    acc.iter().sum::<i32>() + rest
}

/// A score and its row, ordered by score (`f32::total_cmp`), then the older row first.
#[derive(Clone, Copy, Debug)]
pub(super) struct Scored(f32, usize);

impl Ord for Scored {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0).then(o.1.cmp(&self.1))
    }
}

impl PartialOrd for Scored {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

impl PartialEq for Scored {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o).is_eq()
    }
}

impl Eq for Scored {}

/// The texts in order of exact similarity to a query (dot product), worked out only as far as
/// they are read. One scan of the quantised rows gives each row an upper bound on its exact
/// score; a row is scored exactly once its bound could beat every exactly scored row not yet
/// returned, so the order is the exact one although most rows are never scored exactly.
/// Rows only ever get appended to [`Vectors`], so a ranking outlives the lock it was made
/// under: rows added later are not in it.
pub(super) struct Ranking {
    query: Vec<f32>,
    /// Upper bounds of the rows not scored exactly yet.
    bounds: std::collections::BinaryHeap<Scored>,
    /// Exact scores of the rows scored but not returned yet.
    exact: std::collections::BinaryHeap<Scored>,
    /// Rows still to return.
    left: usize,
}

impl Ranking {
    /// At most `limit` rows of `v`, ranked against `query` (empty when the sizes differ).
    pub(super) fn new(v: &Vectors, query: &[f32], limit: usize) -> Ranking {
        let mut r = Ranking {
            query: query.to_vec(),
            bounds: Default::default(),
            exact: Default::default(),
            left: limit,
        };
        if v.dim == 0 || query.len() != v.dim {
            r.left = 0;
            return r;
        }
        let mut qcodes = Vec::with_capacity(v.dim);
        let qscale = quantise(query, &mut qcodes);
        let qcodes_l1: f32 = qcodes.iter().map(|c| f32::from(*c).abs()).sum::<f32>() * qscale;
        let qmax = 127.0 * qscale;
        let mut bounds = Vec::with_capacity(v.rows());
        for row in 0..v.rows() {
            let (scale, l1) = (v.scales[row], v.l1[row]);
            let approx = scale * qscale * dot_i8(v.codes(row), &qcodes) as f32;
            // |v.q - v'.q'| <= |v|.|q - q'| + |q'|.|v - v'|, each value within half a step;
            // the rest covers the rounding of the f32 sums (relative 1e-4 of their scale).
            let err = 0.5 * (qscale * l1 + scale * qcodes_l1) + 1e-4 * (l1 * qmax + approx.abs());
            bounds.push(Scored(approx + err, row));
        }
        // A row that is not finite gets an infinite or NaN bound: scored exactly, first.
        r.bounds = bounds.into();
        r
    }

    /// The next `n` rows at most, best first: (row, exact score).
    pub(super) fn next(&mut self, v: &Vectors, n: usize) -> Vec<(usize, f32)> {
        let mut out = Vec::with_capacity(n.min(self.left));
        while out.len() < n && self.left > 0 {
            while let Some(&bound) = self.bounds.peek() {
                if self.exact.peek().is_some_and(|best| *best > bound) {
                    break;
                }
                self.bounds.pop();
                self.exact
                    .push(Scored(dot(v.row(bound.1), &self.query), bound.1));
            }
            let Some(best) = self.exact.pop() else { break };
            out.push((best.1, best.0));
            self.left -= 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::insights::sqlite::SEARCH_TEXTS;

    /// `n` random unit vectors of `dim` values, every third one a near copy of the one before
    /// (the last value nudged by less than a quantisation step), so that the quantised scores
    /// of neighbours tie or cross while their exact scores do not.
    fn random_vectors(n: usize, dim: usize, seed: u64) -> Vectors {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v = Vectors::default();
        let mut last = Vec::new();
        for i in 0..n {
            let mut x: Vec<f32> = if i % 3 == 2 {
                let mut x = last.clone();
                x[dim - 1] += 1e-4 * (rng.random::<f32>() - 0.5);
                x
            } else {
                (0..dim).map(|_| rng.random::<f32>() - 0.5).collect()
            };
            let norm = x.iter().map(|a| a * a).sum::<f32>().sqrt();
            x.iter_mut().for_each(|a| *a /= norm);
            v.push(i as i64 + 1, format!("text {i}"), &x);
            last = x;
        }
        v
    }

    #[test]
    fn quantised_ranking_is_the_exact_ranking() {
        for (dim, seed) in [(3, 1), (37, 2), (384, 3)] {
            let v = random_vectors(1500, dim, seed);
            for q in 0..4 {
                // A stored vector as the query (its own row scores 1), then fresh ones.
                let query: Vec<f32> = if q == 0 {
                    v.row(7).to_vec()
                } else {
                    let w = random_vectors(1, dim, seed * 100 + q);
                    w.row(0).to_vec()
                };
                let mut exact: Vec<Scored> = (0..v.rows())
                    .map(|r| Scored(dot(v.row(r), &query), r))
                    .collect();
                exact.sort_by(|a, b| b.cmp(a));
                let mut ranking = Ranking::new(&v, &query, 1000);
                let mut got = Vec::new();
                // Read in uneven batches, as a search does when its filters drop texts.
                for n in [1, 7, 64].into_iter().cycle() {
                    let batch = ranking.next(&v, n);
                    if batch.is_empty() {
                        break;
                    }
                    got.extend(batch);
                }
                assert_eq!(got.len(), 1000, "dim {dim}");
                for (k, ((row, score), want)) in got.iter().zip(&exact).enumerate() {
                    assert_eq!(
                        (*row, *score),
                        (want.1, want.0),
                        "dim {dim}, query {q}, rank {k}"
                    );
                }
                if q == 0 {
                    assert_eq!(got[0].0, 7);
                    assert!((got[0].1 - 1.0).abs() < 1e-5);
                }
                // f32 sums in lanes agree with an f64 sum.
                let wide: f64 = v
                    .row(got[0].0)
                    .iter()
                    .zip(&query)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                assert!((f64::from(got[0].1) - wide).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn the_best_texts_are_found_without_scoring_most_exactly() {
        let v = random_vectors(3000, 384, 9);
        let query = random_vectors(1, 384, 10).row(0).to_vec();
        let mut ranking = Ranking::new(&v, &query, SEARCH_TEXTS);
        assert_eq!(ranking.next(&v, 10).len(), 10);
        // The error bound is tight enough that most rows are ruled out by their quantised score.
        assert!(ranking.bounds.len() > 2500, "{} left", ranking.bounds.len());
    }

    #[test]
    fn ranking_handles_empty_mismatched_and_zero_vectors() {
        let mut v = Vectors::default();
        assert!(Ranking::new(&v, &[1.0, 0.0], 10).next(&v, 10).is_empty());
        v.push(1, "zero".into(), &[0.0, 0.0]);
        v.push(2, "x".into(), &[1.0, 0.0]);
        v.push(3, "wrong size".into(), &[1.0, 0.0, 0.0]);
        assert_eq!(v.rows(), 2);
        assert!(
            Ranking::new(&v, &[1.0, 0.0, 0.0], 10)
                .next(&v, 10)
                .is_empty()
        );
        let got = Ranking::new(&v, &[1.0, 0.0], 10).next(&v, 10);
        assert_eq!(got, vec![(1, 1.0), (0, 0.0)]);
        let zero_query = Ranking::new(&v, &[0.0, 0.0], 10).next(&v, 10);
        assert_eq!(zero_query.len(), 2);
        assert!(zero_query.iter().all(|(_, s)| *s == 0.0));
        // The limit holds however the rows are read.
        let mut one = Ranking::new(&v, &[1.0, 0.0], 1);
        assert_eq!(one.next(&v, 10), vec![(1, 1.0)]);
        assert!(one.next(&v, 10).is_empty());
    }
}
