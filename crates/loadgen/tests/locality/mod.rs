//! Production embedding-access locality (facebookresearch/dlrm_datasets' `locality_stats.txt`)
//! and the fit of a Zipf exponent to it, which `--skew zipf:production` uses.
//!
//! Each block of a stats file describes one batch of production lookups over all tables: the
//! number of indices and of unique rows, the distribution of unique rows by how often they
//! were hit (bins `1, 2, 3-4, 5-8, ..., 16385-32768, >32768`) and the share of indices that
//! went to rows of each hit count, both as CDFs over those 17 bins. For a Zipf law with
//! exponent `s` over `R` rows and `N` indices per table, the hit count of the row of rank `k`
//! is Binomial(N, p_k) ~ Poisson(N p_k) with `p_k = k^-s / H(s, R)`, which gives both expected
//! CDFs in closed form (summed exactly over the first ranks and over narrow geometric groups of
//! ranks beyond). The fit minimises the mean over blocks of the larger of the two
//! Kolmogorov-Smirnov distances (the largest gap between model and data CDFs at the 17 bin
//! edges); the error reported is that distance.

/// Number of hit-count bins.
pub const BINS: usize = 17;

/// One batch's locality statistics.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalityBlock {
    /// The block's source file name (e.g. `fbgemm_t856_bs65536_0.pt`).
    pub name: String,
    /// Embedding tables in the batch.
    pub tables: u64,
    /// Indices over all tables.
    pub indices: f64,
    /// Unique rows over all tables.
    pub unique: f64,
    /// CDF over the bins of unique rows by hit count.
    pub unique_cdf: [f64; BINS],
    /// CDF over the bins of indices by the hit count of their row.
    pub index_cdf: [f64; BINS],
}

impl LocalityBlock {
    /// Indices per table.
    pub fn indices_per_table(&self) -> f64 {
        self.indices / self.tables as f64
    }
}

/// Parses a `locality_stats.txt`; the error names the line.
pub fn parse(text: &str) -> Result<Vec<LocalityBlock>, String> {
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i];
        if !l.ends_with(".pt") {
            i += 1;
            continue;
        }
        let tables = l
            .split('_')
            .find_map(|p| p.strip_prefix('t').and_then(|d| d.parse::<u64>().ok()))
            .filter(|&t| t > 0)
            .ok_or_else(|| format!("line {}: no table count `_tNNN_` in `{l}`", i + 1))?;
        let mut b = LocalityBlock {
            name: l.to_string(),
            tables,
            indices: 0.0,
            unique: 0.0,
            unique_cdf: [0.0; BINS],
            index_cdf: [0.0; BINS],
        };
        let mut got = 0u8;
        let mut j = i + 1;
        while j < lines.len() && !lines[j].ends_with(".pt") {
            let m = lines[j];
            let value = |m: &str| -> Result<f64, String> {
                m.rsplit(':')
                    .next()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| format!("line {}: no number in `{m}`", j + 1))
            };
            if m.starts_with("Avg # of indices:") {
                b.indices = value(m)?;
                got |= 1;
            } else if m.starts_with("Avg # of unique cols:") {
                b.unique = value(m)?;
                got |= 2;
            } else if m.starts_with("Histogram of col sizes") {
                b.unique_cdf = cdf_after(&lines, j)?;
                got |= 4;
            } else if m.starts_with("Ratio of index distribution") {
                b.index_cdf = cdf_after(&lines, j)?;
                got |= 8;
            }
            j += 1;
        }
        if got != 15 {
            return Err(format!("line {}: block `{l}` is incomplete", i + 1));
        }
        out.push(b);
        i = j;
    }
    if out.is_empty() {
        return Err("no blocks (a line ending in `.pt` starts one)".into());
    }
    Ok(out)
}

/// The CDF line (`['0.000', '0.473', ...]`, 18 values) after a histogram header at `at`.
fn cdf_after(lines: &[&str], at: usize) -> Result<[f64; BINS], String> {
    let (k, l) = lines
        .iter()
        .enumerate()
        .skip(at + 1)
        .take(BINS + 3)
        .find(|(_, l)| l.starts_with("['"))
        .ok_or_else(|| format!("line {}: no CDF line after the histogram", at + 1))?;
    let v: Vec<f64> = l
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|x| x.trim().trim_matches('\'').parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("line {}: bad CDF value in `{l}`", k + 1))?;
    if v.len() != BINS + 1 {
        return Err(format!(
            "line {}: {} CDF values, expected {}",
            k + 1,
            v.len(),
            BINS + 1
        ));
    }
    let mut out = [0.0; BINS];
    out.copy_from_slice(&v[1..]);
    Ok(out)
}

/// The bin of a hit count `j >= 1`: 0 for 1, 1 for 2, 2 for 3-4, ..., 15 for 16385-32768, 16
/// beyond.
fn bin(j: u64) -> usize {
    if j > 32_768 {
        BINS - 1
    } else {
        (64 - (j - 1).leading_zeros()) as usize
    }
}

/// ln(m!).
fn ln_fact(m: u64) -> f64 {
    if m < 64 {
        (2..=m).map(|k| (k as f64).ln()).sum()
    } else {
        let x = m as f64;
        x * x.ln() - x + 0.5 * (2.0 * std::f64::consts::PI * x).ln() + 1.0 / (12.0 * x)
            - 1.0 / (360.0 * x * x * x)
    }
}

/// Adds `weight` rows whose hit count is Poisson(lambda) to the per-bin row and index sums.
fn add_poisson(lambda: f64, weight: f64, rows: &mut [f64; BINS], idx: &mut [f64; BINS]) {
    if lambda <= 0.0 || weight <= 0.0 {
        return;
    }
    let sd = lambda.sqrt();
    let lo = (lambda - 10.0 * sd - 10.0).max(1.0) as u64;
    let hi = (lambda + 10.0 * sd + 10.0).ceil() as u64;
    if lo > 1 && bin(lo) == bin(hi) {
        // All the mass (to ~1e-23) is in one bin.
        rows[bin(lo)] += weight;
        idx[bin(lo)] += weight * lambda;
        return;
    }
    let start = (lambda.floor() as u64).clamp(lo, hi);
    let p0 = (start as f64 * lambda.ln() - lambda - ln_fact(start)).exp();
    let mut add = |j: u64, p: f64| {
        rows[bin(j)] += weight * p;
        idx[bin(j)] += weight * p * j as f64;
    };
    let mut p = p0;
    for j in start..=hi {
        add(j, p);
        p *= lambda / (j + 1) as f64;
    }
    let mut p = p0;
    for j in (lo..start).rev() {
        p *= (j + 1) as f64 / lambda;
        add(j, p);
    }
}

/// The expected unique-row and index CDFs of `n` draws from Zipf(`s`) over `rows` rows.
pub fn expected_cdfs(s: f64, rows: u64, n: f64) -> Cdfs {
    // Rank groups: (first rank, count, mean k^-s over the group).
    const EXACT: u64 = 128;
    let mut groups: Vec<(f64, f64)> = Vec::new();
    for k in 1..=rows.min(EXACT) {
        groups.push((1.0, (k as f64).powf(-s)));
    }
    let integral = |a: f64, b: f64| {
        if (s - 1.0).abs() < 1e-9 {
            (b / a).ln()
        } else {
            (b.powf(1.0 - s) - a.powf(1.0 - s)) / (1.0 - s)
        }
    };
    let mut lo = EXACT + 1;
    while lo <= rows {
        let hi = ((lo as f64 * 1.01) as u64).clamp(lo, rows);
        let count = (hi - lo + 1) as f64;
        let mean = integral(lo as f64 - 0.5, hi as f64 + 0.5) / count;
        groups.push((count, mean));
        lo = hi + 1;
    }
    let h: f64 = groups.iter().map(|(c, m)| c * m).sum();
    let (mut r, mut x) = ([0.0; BINS], [0.0; BINS]);
    for &(count, mean) in &groups {
        add_poisson(n * mean / h, count, &mut r, &mut x);
    }
    (cdf(&r), cdf(&x))
}

fn cdf(v: &[f64; BINS]) -> [f64; BINS] {
    let total: f64 = v.iter().sum();
    let mut out = [0.0; BINS];
    let mut acc = 0.0;
    for (o, x) in out.iter_mut().zip(v) {
        acc += x;
        *o = acc / total;
    }
    out
}

/// The unique-row and index CDFs of a model.
pub type Cdfs = ([f64; BINS], [f64; BINS]);

/// The larger of the two Kolmogorov-Smirnov distances between a model and a block.
pub fn distance(model: &Cdfs, b: &LocalityBlock) -> f64 {
    let d = |m: &[f64; BINS], d: &[f64; BINS]| {
        m.iter()
            .zip(d)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    };
    d(&model.0, &b.unique_cdf).max(d(&model.1, &b.index_cdf))
}

/// A fitted Zipf law.
#[derive(Clone, Debug, PartialEq)]
pub struct ZipfFit {
    /// The exponent.
    pub s: f64,
    /// Rows per table assumed in the fit.
    pub rows: u64,
    /// Mean over blocks of the larger Kolmogorov-Smirnov distance of the two CDFs.
    pub mean_error: f64,
    /// The worst block's distance.
    pub max_error: f64,
}

/// Mean and max distance of Zipf(`s`, `rows`) to the blocks, each with its own indices per
/// table.
pub fn evaluate(blocks: &[LocalityBlock], s: f64, rows: u64) -> (f64, f64) {
    let mut cache: Vec<(u64, Cdfs)> = Vec::new();
    let (mut sum, mut max) = (0.0, 0.0f64);
    for b in blocks {
        // Blocks of one file differ in indices per table by well under 1%: share the model.
        let n = b.indices_per_table();
        let key = (n / 1e3).round() as u64;
        let m = match cache.iter().find(|(k, _)| *k == key) {
            Some((_, m)) => *m,
            None => {
                let m = expected_cdfs(s, rows, n);
                cache.push((key, m));
                m
            }
        };
        let d = distance(&m, b);
        sum += d;
        max = max.max(d);
    }
    (sum / blocks.len() as f64, max)
}

/// Fits the exponent for each row count in `rows` (grid over 0.3..=2 by 0.05, then refined by
/// 0.002) and returns the best fit of each, best first.
pub fn fit(blocks: &[LocalityBlock], rows: &[u64]) -> Vec<ZipfFit> {
    let mut out: Vec<ZipfFit> = rows
        .iter()
        .map(|&r| {
            let best = |lo: f64, hi: f64, step: f64| {
                let mut best = (f64::INFINITY, 0.0, lo);
                let mut s = lo;
                while s <= hi + 1e-12 {
                    let (mean, max) = evaluate(blocks, s, r);
                    if mean < best.0 {
                        best = (mean, max, s);
                    }
                    s += step;
                }
                best
            };
            let coarse = best(0.3, 2.0, 0.05);
            let (mean_error, max_error, s) = best(coarse.2 - 0.05, coarse.2 + 0.05, 0.002);
            ZipfFit {
                s: (s * 1000.0).round() / 1000.0,
                rows: r,
                mean_error,
                max_error,
            }
        })
        .collect();
    out.sort_by(|a, b| a.mean_error.total_cmp(&b.mean_error));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_and_poisson() {
        assert_eq!(
            [1, 2, 3, 4, 5, 8, 9, 32_768, 32_769].map(bin),
            [0, 1, 2, 2, 3, 3, 4, 15, 16]
        );
        for lambda in [1e-4, 0.3, 2.0, 37.0, 900.0, 5e4] {
            let (mut r, mut x) = ([0.0; BINS], [0.0; BINS]);
            add_poisson(lambda, 1.0, &mut r, &mut x);
            let p1: f64 = r.iter().sum();
            let mean: f64 = x.iter().sum();
            let want = 1.0 - (-lambda).exp();
            assert!(
                (p1 - want).abs() < 1e-9 * want.max(1e-3),
                "{lambda}: {p1} vs {want}"
            );
            assert!(
                (mean - lambda).abs() < 1e-9 * lambda.max(1.0),
                "{lambda}: {mean}"
            );
        }
    }

    #[test]
    fn uniform_limit() {
        // s = 0 over many rows: almost every hit row is hit once.
        let (u, i) = expected_cdfs(0.0, 100_000_000, 1000.0);
        assert!(u[0] > 0.99999 && i[0] > 0.9999, "{u:?} {i:?}");
    }
}
