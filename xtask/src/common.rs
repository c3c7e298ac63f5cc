//! Small helpers the experiments share: today's date for results folders, and the spread of
//! repeated measurements that noise floors are made of.

/// Today's date as `YYYY-MM-DD` (`undated` if `date` cannot tell).
pub(crate) fn today() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "undated".into())
}

/// Relative spread of measurements: (max - min) / median; 0 for fewer than two.
pub(crate) fn spread(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let median = s[s.len() / 2];
    (s[s.len() - 1] - s[0]) / median
}

/// Builds the release CLI (`cargo build --release --bin streamrec` in `root`) and returns its
/// path.
pub(crate) fn build_release_cli(root: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    eprintln!("building the release CLI ...");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = std::process::Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "--bin", "streamrec"])
        .status()?;
    if !st.success() {
        anyhow::bail!("cargo build --release --bin streamrec failed");
    }
    Ok(root.join("target/release/streamrec"))
}
