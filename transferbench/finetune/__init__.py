"""The two transfer protocols: linear probes on frozen features, and full mask-preserving fine-tuning."""
