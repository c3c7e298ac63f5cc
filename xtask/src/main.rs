//! `cargo xtask`: experiment orchestration for StreamRec.
fn main() {}
