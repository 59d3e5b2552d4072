"""transferbench: how well do sparse (pruned) ImageNet models transfer?"""

__version__ = "0.1.0"
