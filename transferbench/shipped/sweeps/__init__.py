"""The paper's sweeps as YAML specs (``transferbench sweep paper_resnet50_linear``)."""
