"""The published checkpoint table (``table.yaml``), read by transferbench.checkpoints.registry."""
