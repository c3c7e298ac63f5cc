//! The `streamrec` command-line tool.
fn main() {}
