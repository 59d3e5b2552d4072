"""Cluster profiles (``slurm/*.yaml``): the resources a sweep's jobs ask for, per mode.

    partition: gpu                 # SLURM partition (null: the cluster's default)
    account: null                  # --account
    qos: null                      # --qos
    gpus_per_node: 1
    cpus_per_task: 8               # data-loading workers = cpus_per_task - 1
    mem_gb: 64
    time_min: {linear: 120, full: 1440}   # wall-clock limit per mode (or one number; estimate, evaluate: linear's)
    array_parallelism: 64          # jobs of one sweep command running at once (split into each array's %N)
    max_array_size: 1000           # the cluster's MaxArraySize; bigger grids become several arrays
    max_requeues: 10               # how often a job may be requeued after a time-out
    signal_delay_s: 120            # USR2 this long before the time limit: full fine-tuning saves and requeues
    constraint: null
    exclude: null
    setup: ["module load cuda/12.4"]   # shell lines run before the job: modules, variables
    sbatch: {}                     # any other #SBATCH option, e.g. {gres: "gpu:a100:1"} (then gpus_per_node: 0)
    upstream:                      # upstream training jobs (one DDP job each; every key optional)
      nodes: 1
      gpus_per_node: 8             # one process per GPU (default: gpus_per_node above)
      tasks_per_node: 1            # processes per node when there are no GPUs (CPU clusters, gloo)
      cpus_per_task: 8             # per process (default: cpus_per_task above)
      mem_gb: 480                  # per node (default: mem_gb above)
      time_min: 2880               # per allocation; training resumes after each requeue (default: time_min full)

A job runs the Python that ran ``transferbench sweep``, by its absolute path (submitit's srun line), so the
environment is chosen by activating it before submitting; activating another one in ``setup`` changes PATH
and such for the job, not its interpreter.

Profiles ship in ``slurm/`` (inside the package as ``transferbench.shipped.slurm``); ``--profile`` also takes a path.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import shipped
from ..errors import TransferbenchError
from .sweep import MODES

if TYPE_CHECKING:
    from .upstream_spec import UpstreamUnit


@dataclass(frozen=True)
class Profile:
    name: str
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem_gb: float = 64
    time_min: dict[str, int] = field(default_factory=lambda: {"linear": 120, "full": 1440, "estimate": 120,
                                                              "evaluate": 120})
    array_parallelism: int = 64
    max_array_size: int = 1000
    max_requeues: int = 10
    signal_delay_s: int = 120
    constraint: str | None = None
    exclude: str | None = None
    setup: tuple[str, ...] = ()
    sbatch: dict[str, Any] = field(default_factory=dict)
    upstream: dict[str, int | float] = field(default_factory=dict)  # overrides for upstream jobs (UPSTREAM_KEYS)
    description: str = ""

    @property
    def workers(self) -> int:
        """Data-loading workers per job: one core stays with the main process."""
        return max(0, self.cpus_per_task - 1)

    def executor_parameters(self, mode: str, job_name: str, array_parallelism: int | None = None) -> dict[str, Any]:
        """``submitit.AutoExecutor.update_parameters`` keywords for jobs of ``mode``: the generic ones, and the
        SLURM-only ones with their ``slurm_`` prefix. ``array_parallelism``: this array's share of the profile's
        (several arrays submitted together split it)."""
        params: dict[str, Any] = {
            "name": job_name, "timeout_min": int(self.time_min[mode]), "mem_gb": self.mem_gb,
            "cpus_per_task": self.cpus_per_task, "nodes": 1, "tasks_per_node": 1,
            "slurm_array_parallelism": array_parallelism or self.array_parallelism,
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        return {**params, **self._site_parameters()}

    def upstream_layout(self, nodes: int | None = None, gpus: int | None = None, single_process: bool = False,
                        what: str = "--gpus/--nodes") -> JobLayout:
        """The size of one upstream job: ``gpus`` in all over ``nodes`` (one process per GPU), else the profile's
        ``upstream:`` section over its base values. ``single_process``: one process on one node (one GPU if the
        profile has any), for work too small to share (a mini-suite model, one-shot candidates). ``what`` names
        where ``nodes``/``gpus`` came from, for the error."""
        up = self.upstream
        per_node = int(up.get("gpus_per_node", self.gpus_per_node))
        common = {"cpus_per_task": int(up.get("cpus_per_task", self.cpus_per_task)),
                  "mem_gb": float(up.get("mem_gb", self.mem_gb)),
                  "time_min": int(up.get("time_min", self.time_min["full"]))}
        if single_process:
            return JobLayout(1, 1, min(per_node, 1), **common)
        nodes = int(up.get("nodes", 1)) if nodes is None else nodes
        if nodes < 1 or (gpus is not None and gpus < 1):
            raise TransferbenchError(f"{what}: nodes and GPUs must be 1 or more, got nodes {nodes}, GPUs {gpus}")
        if gpus is not None:
            if gpus % nodes:
                raise TransferbenchError(f"{what}: {gpus} GPU(s) do not split evenly over {nodes} node(s); every "
                                         "node runs as many processes, so give a multiple of the node count")
            if not per_node:
                raise TransferbenchError(f"{what}: profile {self.name} has no GPUs (gpus_per_node 0 and no "
                                         "upstream: gpus_per_node); leave out the GPU count or use a GPU profile")
            per_node = gpus // nodes
        tasks = per_node if per_node else int(up.get("tasks_per_node", 1))
        return JobLayout(nodes, tasks, per_node, **common)

    def upstream_parameters(self, layout: JobLayout, job_name: str) -> dict[str, Any]:
        """``update_parameters`` keywords of one upstream job of ``layout``: one task per process, which submitit
        starts with srun on every node."""
        params: dict[str, Any] = {"name": job_name, "timeout_min": layout.time_min, "mem_gb": layout.mem_gb,
                                  "cpus_per_task": layout.cpus_per_task, "nodes": layout.nodes,
                                  "tasks_per_node": layout.tasks_per_node}
        if layout.gpus_per_node:
            params["gpus_per_node"] = layout.gpus_per_node
        return {**params, **self._site_parameters()}

    def _site_parameters(self) -> dict[str, Any]:
        """The SLURM-only keywords every job of this profile gets: signal, set-up lines, partition and such."""
        params: dict[str, Any] = {"slurm_signal_delay_s": self.signal_delay_s, "slurm_setup": list(self.setup)}
        optional = {"partition": self.partition, "account": self.account, "qos": self.qos,
                    "constraint": self.constraint, "exclude": self.exclude}
        params.update({f"slurm_{k}": v for k, v in optional.items() if v})
        if self.sbatch:
            params["slurm_additional_parameters"] = dict(self.sbatch)
        return params


@dataclass(frozen=True)
class JobLayout:
    """One upstream job's size: ``nodes`` × ``tasks_per_node`` processes (one per GPU where there are GPUs)."""

    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    mem_gb: float
    time_min: int

    @property
    def processes(self) -> int:
        return self.nodes * self.tasks_per_node

    def describe(self) -> str:
        gpus = f", {self.gpus_per_node} GPU(s) per node" if self.gpus_per_node else ", no GPU"
        return f"{self.nodes} node(s) x {self.tasks_per_node} process(es){gpus}, {self.time_min} min"


def packaged_profiles() -> list[str]:
    return shipped.names("profile")


DEFAULT_PROFILE, CPU_PROFILE = "default", "cpu"


def default_profile_name(tasks: Iterable[str], upstream: Iterable[UpstreamUnit] = ()) -> str:
    """The profile a sweep takes when ``--profile`` is not given: ``cpu`` (no GPU, a few cores, short limits) when
    every task is a mini-task (resnet_tiny on digits/textures: the mini-suite, the demo) and none of its
    ``upstream:`` entries asks for GPUs or nodes; else ``default``."""
    from ..tasks import get_task

    kinds = {get_task(task).kind for task in tasks}
    sized = any(unit.gpus is not None or unit.nodes is not None for unit in upstream)
    return CPU_PROFILE if kinds == {"mini"} and not sized else DEFAULT_PROFILE


def load_profile(name_or_path: str | Path) -> Profile:
    raw, origin, name = shipped.load("profile", name_or_path, flag="--profile")
    return parse_profile(raw or {}, origin, name)


def parse_profile(raw: Any, origin: str, name: str) -> Profile:
    if not isinstance(raw, dict):
        raise TransferbenchError(f"profile {origin} must be a YAML mapping (see slurm/README.md)")
    known = {f.name for f in fields(Profile)} - {"name"}
    if unknown := sorted(set(raw) - known):
        raise TransferbenchError(f"profile {origin}: unknown key(s) {', '.join(unknown)}; known: "
                                 f"{', '.join(sorted(known))}")
    values = dict(raw)
    time_min = values.get("time_min", Profile.__dataclass_fields__["time_min"].default_factory())
    if not isinstance(time_min, dict):
        time_min = dict.fromkeys(MODES, time_min)
    time_min = {**time_min, "estimate": time_min.get("estimate", time_min.get("linear")),  # extracts as a probe
                "evaluate": time_min.get("evaluate", time_min.get("linear"))}  # one pass, as a probe's extraction
    if set(time_min) != set(MODES):
        raise TransferbenchError(f"profile {origin}: time_min needs a value for each of linear and full (estimate and "
                                 "evaluate: linear's by default)")
    values["time_min"] = {m: _whole_number(v, f"time_min {m}", origin) for m, v in time_min.items()}
    for key in ("gpus_per_node", "cpus_per_task", "array_parallelism", "max_array_size", "max_requeues",
                "signal_delay_s"):
        if key in values:
            values[key] = _whole_number(values[key], key, origin)
    if "mem_gb" in values:
        mem = values["mem_gb"]
        if isinstance(mem, bool) or not isinstance(mem, int | float) or not mem > 0:
            raise TransferbenchError(f"profile {origin}: mem_gb must be a positive number, got {mem!r}")
        values["mem_gb"] = float(mem)
    for key in ("partition", "account", "qos", "constraint", "exclude", "description"):
        value = values.get(key)
        if value is not None and not isinstance(value, str):  # `account: 0042` is the (octal) number 34
            raise TransferbenchError(f"profile {origin}: {key} must be a string, got {value!r}; put the value in "
                                     "quotes in the file")
    if values.get("description") is None:
        values.pop("description", None)
    values["setup"] = _setup_lines(values.get("setup"), origin)
    values["sbatch"] = _sbatch_options(values.get("sbatch"), origin)
    values["upstream"] = _upstream_section(values.get("upstream"), origin)
    profile = Profile(name=name, **values)
    if min(profile.time_min.values()) < 1 or profile.cpus_per_task < 1 or profile.array_parallelism < 1 \
            or profile.max_array_size < 1:
        raise TransferbenchError(f"profile {origin}: time_min, cpus_per_task, array_parallelism and max_array_size "
                                 "must be positive")
    if negative := [k for k in ("gpus_per_node", "max_requeues", "signal_delay_s") if getattr(profile, k) < 0]:
        raise TransferbenchError(f"profile {origin}: {', '.join(negative)} must be 0 or more")
    return profile


UPSTREAM_KEYS = ("nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "time_min")


def _upstream_section(raw: Any, origin: str) -> dict[str, int | float]:
    """``upstream:``: the size of upstream jobs, each key optional (``Profile.upstream_layout`` fills the rest)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TransferbenchError(f"profile {origin}: upstream must be a mapping of {', '.join(UPSTREAM_KEYS)}")
    if unknown := sorted(set(raw) - set(UPSTREAM_KEYS)):
        raise TransferbenchError(f"profile {origin}: upstream has unknown key(s) {', '.join(map(str, unknown))}; "
                                 f"known: {', '.join(UPSTREAM_KEYS)}")
    section: dict[str, int | float] = {}
    for key, value in raw.items():
        if key == "mem_gb":
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise TransferbenchError(f"profile {origin}: upstream mem_gb must be a positive number, got {value!r}")
            section[key] = float(value)
            continue
        section[key] = _whole_number(value, f"upstream {key}", origin)
        least = 0 if key == "gpus_per_node" else 1
        if section[key] < least:
            raise TransferbenchError(f"profile {origin}: upstream {key} must be {least} or more, got {value!r}")
    return section


def _whole_number(value: Any, key: str, origin: str) -> int:
    """A whole number as YAML writes it. Not ``int()``: it turns ``true`` into 1 and 2.7 GPUs into 2, and the
    jobs would then ask for resources nobody wrote down."""
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise TransferbenchError(f"profile {origin}: {key} must be a whole number, got {value!r}")
    return int(value)


def _setup_lines(raw: Any, origin: str) -> tuple[str, ...]:
    """``setup:`` as shell lines: one string is one line (iterating it would give one line per character)."""
    if raw is None:
        return ()
    lines = [raw] if isinstance(raw, str) else raw
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines):
        raise TransferbenchError(f"profile {origin}: setup must be a shell line or a list of them, got {raw!r}")
    return tuple(lines)


def _sbatch_options(raw: Any, origin: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TransferbenchError(f"profile {origin}: sbatch must be a mapping of #SBATCH option: value, e.g. "
                                 f"{{gres: \"gpu:a100:1\"}}, got {raw!r}")
    if bad := [k for k, v in raw.items() if not isinstance(k, str) or isinstance(v, list | dict)]:
        raise TransferbenchError(f"profile {origin}: sbatch option(s) {bad} need a name and one value each")
    # submitit writes every value with str(), so these would reach sbatch as --option=None / --option=False
    if empty := [k for k, v in raw.items() if v is None or v is False]:
        raise TransferbenchError(f"profile {origin}: sbatch option(s) {empty} have no value (null or false); give "
                                 "one, `true` for an option without a value, or leave the option out")
    return dict(raw)
