//! StreamRec runtime: backends, execution contexts and the engine that runs a plan.
