//! StreamRec load generator: open-loop request replay with latency histograms.
