"""transferbench: how well do sparse (pruned) ImageNet models transfer?

The public API is the few names below; each is imported on first use, so ``import transferbench`` stays cheap
(no torch):

    import transferbench as tb

    ref = tb.resolve_checkpoint("acdc", 0.9, "resnet_tiny", None)
    spec = tb.make_spec("digits", "linear", seed=21, checkpoint=ref, overrides={"epochs": 20})
    [record] = tb.run([spec], tb.RunContext(results="results"))
    print(record.run_key, record.metrics.top1)
"""

import typing as _typing

from .lazy import lazy_package as _lazy_package
from .version import __version__ as __version__

# the module that defines each public name (imported on first use)
_lazy_package(__name__, {
    ".tasks": ("get_task",),
    ".checkpoints": ("find_checkpoint", "resolve_checkpoint"),
    ".runspec": ("make_spec",),
    ".context": ("RunContext",),
    ".runner": ("run",),
    ".store": ("RunRecord",),
    ".report.collect": ("collect",),
    ".dispatch.plan": ("plan_sweep",),
    ".report.build": ("write_report",),
})

__all__ = [  # the names above, spelled out for tools that read __all__ without running the module
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

if _typing.TYPE_CHECKING:  # for type checkers and IDEs; at run time each is imported on first use
    from .checkpoints import find_checkpoint, resolve_checkpoint
    from .context import RunContext
    from .dispatch.plan import plan_sweep
    from .report.build import write_report
    from .report.collect import collect
    from .runner import run
    from .runspec import make_spec
    from .store import RunRecord
    from .tasks import get_task

