"""The optimizer core: a plan (per-node choice of pass and ranks), the function that applies it, the driver
that applies plans to the BN-folded model with instruments around each step, and the budget they judge by."""
