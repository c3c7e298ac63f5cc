//! Random and mutated request bodies for robustness tests (`tests/serve.rs`, `cargo xtask
//! fuzz`): byte flips, deletions, insertions of JSON tokens and huge numbers, truncations and
//! swaps of a valid seed body, or plain random bytes.

use rand::rngs::StdRng;
use rand::Rng;

const TOKENS: [&[u8]; 14] = [
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\"",
    b"-1",
    b"1e999",
    b"null",
    b"\"INT32\"",
    b"18446744073709551616",
    b"\"binary_data_size\":",
    b"[1418980313362273202,13]",
];

/// `seed` with one to five random edits.
pub fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.random_range(1..6) {
        let len = v.len();
        let i = rng.random_range(0..len.max(1));
        match rng.random_range(0..5) {
            0 if len > 0 => v[i.min(len - 1)] = rng.random(),
            1 if len > 0 => {
                v.remove(i.min(len - 1));
            }
            2 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                let at = i.min(len);
                v.splice(at..at, t.iter().copied());
            }
            3 => v.truncate(i),
            _ => {
                let j = rng.random_range(0..len.max(1));
                if i < len && j < len {
                    v.swap(i, j);
                }
            }
        }
    }
    v
}

/// Up to `max_len` random bytes.
pub fn random_bytes(rng: &mut StdRng, max_len: usize) -> Vec<u8> {
    let len = rng.random_range(0..max_len.max(1));
    (0..len).map(|_| rng.random()).collect()
}
