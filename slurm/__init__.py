"""Cluster profiles (YAML) and the single-node test cluster script; shipped as transferbench.shipped.slurm."""
