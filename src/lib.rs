//! StreamRec facade: re-exports the workspace crates for embedding in other programs.
