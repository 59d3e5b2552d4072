"""Upstream training recipes (``transferbench upstream --recipe small_cpu``)."""
