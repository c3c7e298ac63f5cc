//! The instruction-set paths of the packed kernels ([`Isa`]): which this machine supports, the
//! fastest of them, and their names (`avx512`, `avx2`, `portable`) for a command line.

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// An instruction-set path of the packed kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512F micro-kernels (16 lanes).
    Avx512,
    /// AVX2 + FMA micro-kernels (8 lanes).
    Avx2,
    /// Portable Rust (`f32::mul_add`), for every other machine.
    Portable,
}

/// A path that cannot be named or run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IsaError {
    /// The name is none of `avx512`, `avx2`, `portable`.
    #[error("unknown CPU ISA {0:?} (expected avx512, avx2 or portable)")]
    Unknown(String),
    /// This machine lacks the instructions of the path.
    #[error("this machine cannot run the {0} path of the packed kernels")]
    Unsupported(Isa),
}

impl Isa {
    /// Every path, fastest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// The fastest path this machine supports, detected once per process.
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| Isa::supported()[0])
    }

    /// Whether this machine can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            Isa::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every path this machine supports, fastest first.
    pub fn supported() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// The path itself if this machine supports it.
    ///
    /// # Errors
    ///
    /// [`IsaError::Unsupported`] if it does not.
    pub fn require(self) -> Result<Isa, IsaError> {
        if self.is_supported() {
            Ok(self)
        } else {
            Err(IsaError::Unsupported(self))
        }
    }

    /// The path's name, as [`Isa::from_str`] reads it: `avx512`, `avx2` or `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = IsaError;

    /// Reads a path's [`name`](Isa::name), ignoring surrounding whitespace.
    fn from_str(s: &str) -> Result<Isa, IsaError> {
        let s = s.trim();
        Isa::ALL
            .into_iter()
            .find(|i| i.name() == s)
            .ok_or_else(|| IsaError::Unknown(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    //! Names, detection and the supported check.

    use super::*;

    #[test]
    fn names_read_back_and_unknown_ones_are_refused() {
        for isa in Isa::ALL {
            assert_eq!(isa.name().parse::<Isa>(), Ok(isa));
            assert_eq!(format!(" {isa}\n").parse::<Isa>(), Ok(isa));
        }
        assert_eq!(
            "AVX2".parse::<Isa>(),
            Err(IsaError::Unknown("AVX2".to_string()))
        );
        assert!("sse".parse::<Isa>().is_err());
    }

    #[test]
    fn detect_is_the_fastest_supported_path_and_require_checks_support() {
        assert_eq!(Isa::detect(), Isa::supported()[0]);
        assert_eq!(Isa::supported().last(), Some(&Isa::Portable));
        for isa in Isa::ALL {
            let want = if isa.is_supported() {
                Ok(isa)
            } else {
                Err(IsaError::Unsupported(isa))
            };
            assert_eq!(isa.require(), want);
        }
    }
}
