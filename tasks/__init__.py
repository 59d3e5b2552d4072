"""The YAML task cards; shipped as transferbench.shipped.tasks."""
