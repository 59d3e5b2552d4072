"""transferbench: how well do sparse (pruned) ImageNet models transfer?

The public API is the few names below; each is imported on first use, so ``import transferbench`` stays cheap
(no torch):

    import transferbench as tb

    ref = tb.resolve_checkpoint("acdc", 0.9, "resnet_tiny", None)
    spec = tb.make_spec("digits", "linear", seed=21, checkpoint=ref, overrides={"epochs": 20})
    [record] = tb.run([spec], tb.RunContext(results="results"))
    print(record.run_key, record.metrics.top1)
"""

import importlib as _importlib
import typing as _typing

from .version import __version__ as __version__

# public name -> the module that defines it
_PUBLIC = {
    "get_task": "transferbench.tasks",
    "find_checkpoint": "transferbench.checkpoints",
    "resolve_checkpoint": "transferbench.checkpoints",
    "make_spec": "transferbench.runspec",
    "RunContext": "transferbench.context",
    "run": "transferbench.runner",
    "RunRecord": "transferbench.store",
    "collect": "transferbench.report.collect",
    "plan_sweep": "transferbench.dispatch.plan",
    "write_report": "transferbench.report.build",
}

__all__ = [  # the names of _PUBLIC, spelled out for tools that read __all__ without running the module
    "RunContext",
    "RunRecord",
    "collect",
    "find_checkpoint",
    "get_task",
    "make_spec",
    "plan_sweep",
    "resolve_checkpoint",
    "run",
    "write_report",
]

if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports on first use
    from .checkpoints import find_checkpoint, resolve_checkpoint
    from .context import RunContext
    from .dispatch.plan import plan_sweep
    from .report.build import write_report
    from .report.collect import collect
    from .runner import run
    from .runspec import make_spec
    from .store import RunRecord
    from .tasks import get_task


def __getattr__(name: str) -> object:
    """PEP 562: a public name's module is imported when the name is first used, then the name is cached here."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'transferbench' has no attribute {name!r}")
    value = getattr(_importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
