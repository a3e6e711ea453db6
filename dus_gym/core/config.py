"""Explicit, frozen configuration objects, read from YAML mappings with strict key checking.

Every rule about a setting lives here once: ranges in each dataclass's ``__post_init__``, the
budget rule in :class:`Budget`, the count rules in :func:`check_count_range` and :func:`check_counts`,
and the finiteness of every float setting in :func:`check_finite` (called by :func:`from_dict` for
values read from files and by each dataclass's ``__post_init__`` for values given in Python, so a NaN
or inf value is refused wherever it comes from). Error messages show at most :data:`MAX_SHOWN`
characters of a value (a YAML alias bomb must not become a gigabyte error line).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import reprlib
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

from dus_gym.error import ConfigError

T = TypeVar("T")

OPTIMIZERS = ("sgd", "adam", "adamw")
"""The learner's optimisers (``learner.optimizer``; built by :class:`dus_gym.core.learner.Learner`)."""
FUSIONS = ("concat", "sum", "gated", "film")
"""The fusion heads of the model (``learner.fusion``; built by :func:`dus_gym.core.model.fusion_head`)."""
MAX_ITERATIONS = 10_000_000
"""Upper bound of a run's budget in learner iterations (the count history is allocated up front)."""
MAX_COUNT = 1_000_000
"""Upper bound of any per-modality count or batch size (a batch must fit in memory)."""
MAX_SHOWN = 200
"""Characters of a value shown in an error message."""
MAX_ENVS = 1024
"""Upper bound of the envs of one vector env (each holds a learner and its episode state)."""
MAX_WORKERS = 1024
"""Upper bound of the worker processes of a bench, a family comparison or a prepare."""
MAX_TIMESTEPS = 1_000_000_000
"""Upper bound of a policy's training (or a tuning trial's) env steps."""
MAX_TRIALS = 100_000
"""Upper bound of the trials of a tuning study."""


@dataclass(frozen=True)
class LearnerConfig:
    """How the multimodal learner trains (see docs/method.md)."""

    batch_size: int = 64
    """Base batch size B: what every modality gets under uniform sampling."""
    optimizer: str = "sgd"
    """"sgd" (with momentum), "adam" (L2 weight decay) or "adamw" (decoupled weight decay)."""
    lr: float = 0.05
    """Learning rate."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1e-4
    """L2 weight decay."""
    unimodal_loss: str = "scaled"
    """"scaled": each unimodal loss times n(m)/B (the DUS default); "mean": plain batch average."""
    fusion: str = "concat"

    device: str = "cpu"
    """"cpu", "cuda", "cuda:N" or "auto" (CUDA when available)."""
    eval_batch_size: int = 1024
    """Samples per forward pass when evaluating (lower it for large encoders)."""
    lr_decay_every: int | None = None
    """Multiply the learning rate by lr_decay_gamma every this many iterations (None: constant)."""
    lr_decay_gamma: float = 0.1
    """Factor of the step decay."""
    precision: str = "fp32"
    """"fp32", or "bf16" (autocast to bfloat16; the losses stay in float32)."""
    channels_last: bool = False
    """Image-like inputs and convolution weights in channels-last memory format (faster on GPUs)."""
    cudnn_benchmark: bool = True
    """On CUDA, let cuDNN pick the fastest kernels per shape (set process-wide)."""
    compile: bool = False
    """torch.compile each encoder (static shapes: use count_sizes so that few shapes occur)."""
    compile_backend: str = "inductor"
    """torch.compile backend."""
    num_workers: int = 0
    """DataLoader worker processes that load on-disk (lazy) modalities ahead of the learner."""
    count_sizes: tuple[int, ...] | None = None
    """Round counts up to one of these batch sizes (e.g. [16, 32, 48, 64, 96, 128]); None: exact counts."""
    method: str = "unimodal-aux"
    """How an iteration's losses and gradients are formed: joint, unimodal-aux, ogm-ge, mmpareto or mla."""
    method_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the method (e.g. alpha for ogm-ge, gamma for mmpareto)."""

    def __post_init__(self) -> None:
        check_finite(self, "learner")
        _check(1 <= self.batch_size <= MAX_COUNT,
               f"learner.batch_size must be >= 1 and <= {MAX_COUNT:_}, got {self.batch_size}")
        _check(self.optimizer in OPTIMIZERS,
               f"learner.optimizer must be one of {list(OPTIMIZERS)}, got '{shown(self.optimizer)}'")
        _check(self.lr > 0 and math.isfinite(self.lr), f"learner.lr must be a positive number, got {self.lr}")
        _check(0 <= self.momentum < 1, f"learner.momentum must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"learner.weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.unimodal_loss in ("scaled", "mean"),
               f"learner.unimodal_loss must be 'scaled' or 'mean', got '{self.unimodal_loss}'")
        _check(self.eval_batch_size >= 1, f"learner.eval_batch_size must be >= 1, got {self.eval_batch_size}")
        _check(self.num_workers >= 0, f"learner.num_workers must be >= 0, got {self.num_workers}")
        _check(self.lr_decay_every is None or self.lr_decay_every >= 1,
               f"learner.lr_decay_every must be >= 1 or null, got {self.lr_decay_every}")
        _check(0 < self.lr_decay_gamma <= 1, f"learner.lr_decay_gamma must be in (0, 1], got {self.lr_decay_gamma}")
        _check(self.precision in ("fp32", "bf16"),
               f"learner.precision must be 'fp32' or 'bf16', got '{self.precision}'")
        _check(self.count_sizes is None or (len(self.count_sizes) > 0 and min(self.count_sizes) >= 1),
               f"learner.count_sizes must be positive sizes or null, got {shown(self.count_sizes)}")
        if self.count_sizes is not None:
            check_counts(self.count_sizes, "learner.count_sizes")
        _check(self.fusion in FUSIONS, f"learner.fusion must be one of {list(FUSIONS)}, got '{shown(self.fusion)}'")


@dataclass(frozen=True)
class CMDConfig:
    """Where the learning status comes from and how it accumulates (see docs/method.md)."""

    source: str = "train"
    """"train": the modality's own training batch; "probe": a fixed slice held out of training."""
    probe_size: int = 200
    """Samples held out of the training split as the probe (used when source is "probe")."""
    window: int | None = None
    """None: running mean; w: exponential mean with window w."""

    def __post_init__(self) -> None:
        _check(self.source in ("train", "probe"), f"cmd.source must be 'train' or 'probe', got '{self.source}'")
        _check(self.probe_size >= 1, f"cmd.probe_size must be >= 1, got {self.probe_size}")
        _check(self.window is None or self.window >= 1, f"cmd.window must be >= 1 or null, got {self.window}")


ACTION_TYPES = ("box", "multidiscrete", "allocation", "strength")
"""The actions of a sampling policy (see dus_gym.samplers.action.CountsAction)."""
OBSERVATIONS = ("cmd", "modalities")
"""The observation layouts (see dus_gym.core.observation)."""
FEATURE_GROUPS = ("cmd", "val")
"""Feature groups of the "modalities" observation an ablation can hide (see dus_gym.core.observation.HIDDEN)."""
INSTANCE_POOLS = ("train", "held-out", "all")
"""The instances of a task family an env draws from."""


@dataclass(frozen=True)
class FamilyConfig:
    """A task family: task instances (overrides of the task's kwargs), split into training and held-out ones.

    The instances are ``instances`` as listed, or the list a generator returns (a name of
    ``dus_gym.tasks.FAMILIES``, or "package.module:function" for a user's own) called with
    ``generator_kwargs``. Instance i is the i-th of that list; a fixed share ``held_out`` of them,
    chosen by a permutation seeded with ``split_seed``, is held out of policy training.
    """

    instances: tuple[dict[str, Any], ...] = ()
    """Task-kwargs overrides, one mapping per instance."""
    generator: str | None = None
    """A family generator (name or "module:function") returning that list."""
    generator_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the generator."""
    held_out: float = 0.25
    """Share of the instances held out of policy training (at least one when there are two or more)."""
    split_seed: int = 0
    """Seed of the train / held-out split."""
    group_by: str | None = None
    """Hold out whole groups: instances whose task kwarg ``group_by`` has the same value (a list counts as the
    set of its items, so ordered view tuples group by view set) are all held out or all trained on."""

    def __post_init__(self) -> None:
        _check((len(self.instances) > 0) != (self.generator is not None),
               "family: give either a list of instances or a generator (not both)")
        _check(0 <= self.held_out < 1, f"family.held_out must be in [0, 1), got {self.held_out}")
        for i, instance in enumerate(self.instances):
            _check(isinstance(instance, dict), f"family.instances[{i}] must be a mapping of task kwargs")


@dataclass(frozen=True)
class EnvConfig:
    """How training becomes a Gymnasium env (see docs/env.md); used by :class:`dus_gym.envs.env.DUSEnv`."""

    iterations_per_step: int = 20
    """K: learner iterations run with the chosen counts per env step."""
    n_min: int = 8
    """Count at action -1 (box action)."""
    n_max: int = 256
    """Count at action +1 (box action)."""
    action_type: str = "box"
    """"box": [-1, 1]^M mapped affinely to [n_min, n_max]; "multidiscrete": one of count_levels each;
    "allocation": M x B samples split by softmax(temperature x action), n_min each at least (compute-fair);
    "strength": one number in [-1, 1], the DUS heuristic's alpha for the step (0 at -1, max_alpha at +1): the M x B
    samples of every iteration are split by softmax(-alpha d_t), d_t read at that iteration (compute-fair)."""
    count_levels: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    """Counts of the multidiscrete action."""
    temperature: float = 3.0
    """Allocation action: the softmax temperature on the [-1, 1] preferences."""
    max_alpha: float = 60.0
    """Strength action: the heuristic's alpha at action +1 (action 0 gives max_alpha / 2)."""
    observation: str = "cmd"
    """"cmd": c, d, s, count/B per modality and the progress (4M + 1); "modalities": one row of features per
    modality slot, padded to max_modalities with a mask (docs/env.md)."""
    max_modalities: int | None = None
    """The modality slots of a "modalities" observation and of the action (None: the task's M)."""
    blind: bool = False
    """Zero every CMD-derived feature of the observation: a control policy that sees only the progress."""
    hide: tuple[str, ...] = ()
    """"modalities" observation: feature groups zeroed (an ablation): "cmd" (c, d, relative d, s and the
    memorisation gap), "val" (v, the memorisation gap and the fused validation accuracy)."""
    instances: str = "train"
    """With a task family: the instances a reset draws from, "train", "held-out" or "all"."""
    shared_instance: bool = False
    """With a task family in a vectorised env (VecDUSEnv, make_vec): False puts each env's learner on its own
    instance (of one shape group), True puts all N on one instance."""
    reward_delta_weight: float = 1.0
    """Weight of the change of fused validation accuracy since the last step."""
    reward_cmd_weight: float = 0.0
    """Weight of the |CMD| penalty at every step."""
    reward_terminal_weight: float = 1.0
    """Weight of the final fused validation accuracy, added at the last step."""
    divergence_penalty: float = 1.0
    """Subtracted from the reward when the loss becomes NaN/inf (the episode is then truncated)."""
    start_checkpoint: str | None = None
    """A learner checkpoint (learner.pt of a run) to start every episode from; None: fresh."""

    def __post_init__(self) -> None:
        check_finite(self, "env")
        _check(self.iterations_per_step >= 1, f"env.iterations_per_step must be >= 1, got {self.iterations_per_step}")
        check_count_range(self.n_min, self.n_max, "env")
        _check(self.action_type in ACTION_TYPES,
               f"env.action_type must be one of {list(ACTION_TYPES)}, got '{self.action_type}'")
        _check(self.observation in OBSERVATIONS,
               f"env.observation must be one of {list(OBSERVATIONS)}, got '{self.observation}'")
        _check(self.temperature > 0, f"env.temperature must be > 0, got {self.temperature}")
        _check(0 < self.max_alpha <= 100, f"env.max_alpha must be in (0, 100], got {self.max_alpha}")
        _check(all(g in FEATURE_GROUPS for g in self.hide) and len(set(self.hide)) == len(self.hide),
               f"env.hide must list distinct feature groups of {list(FEATURE_GROUPS)}, got {shown(list(self.hide))}")
        _check(not self.hide or self.observation == "modalities",
               "env.hide applies to the 'modalities' observation only")
        _check(self.max_modalities is None or self.max_modalities >= 2,
               f"env.max_modalities must be >= 2 or null, got {self.max_modalities}")
        _check(self.instances in INSTANCE_POOLS,
               f"env.instances must be one of {list(INSTANCE_POOLS)}, got '{self.instances}'")
        _check(min(self.reward_delta_weight, self.reward_cmd_weight, self.reward_terminal_weight,
                   self.divergence_penalty) >= 0, "env reward weights and divergence_penalty must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    """One training run: task, learner, CMD, sampler, budget, seed and logging."""

    task: str = "mfeat"
    """Registered task name, or "package.module:function" for a user's own builder."""
    task_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the task builder."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Learner settings."""
    cmd: CMDConfig = field(default_factory=CMDConfig)
    """CMD monitor settings."""
    sampler: str = "uniform"
    """Sampler name (uniform, heuristic, constant)."""
    sampler_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the sampler (beyond B and M)."""
    n_iterations: int | None = 1000
    """Budget in learner iterations (optimizer steps). Exactly one of n_iterations and epochs is set."""
    epochs: float | None = None
    """Budget in epochs at the base batch size B: n_iterations = ceil(epochs * n_train / B)."""
    seed: int = 0
    """Seed of model initialisation, data order and probe slice."""
    eval_every: int = 100
    """Evaluate on the validation split every this many iterations (and at the end)."""
    log_every: int = 10
    """Write TensorBoard scalars every this many iterations."""
    run_dir: str = "runs"
    """Parent folder of run folders."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    checkpoint_every: int | None = 500
    """Write the whole run state to checkpoint.pt every this many iterations (None: never); --resume reads it."""
    env_id: str | None = None
    """The Gymnasium id this spec is registered under (specs in envs/), e.g. dus_gym/MFeat-v0."""
    env: EnvConfig = field(default_factory=EnvConfig)
    """Env settings (step size K, action mapping, reward weights) for DUSEnv."""
    flops_every: int | None = 100
    """Count the FLOPs of every this many-th iteration (torch.utils.flop_counter; None: never); the run
    reports their mean as FLOPs per iteration (None for a run shorter than this). A counted iteration
    runs several times slower on a CPU, and the run's wall time includes it (about 5 % at 100)."""
    family: FamilyConfig | None = None
    """A task family (the env draws a task instance at every reset); None: the one task."""

    def __post_init__(self) -> None:
        check_finite(self, "")
        Budget(self.n_iterations, self.epochs)  # the budget rule
        _check(self.flops_every is None or self.flops_every >= 1,
               f"flops_every must be >= 1 or null, got {self.flops_every}")
        _check(self.eval_every >= 1 and self.log_every >= 1, "eval_every and log_every must be >= 1")
        _check(self.checkpoint_every is None or self.checkpoint_every >= 1,
               f"checkpoint_every must be >= 1 or null, got {self.checkpoint_every}")

    def budget(self, n_train: int) -> int:
        """The budget in learner iterations for a training split of ``n_train`` samples."""
        return Budget(self.n_iterations, self.epochs).iterations(n_train, self.learner.batch_size)


@dataclass(frozen=True)
class Budget:
    """A run's budget: learner iterations, or epochs at the base batch size B (exactly one of the two).

    The library always counts in iterations (optimizer steps): the cursor advances by max n(m),
    so a budget in epochs would let a sampler buy optimizer steps by choosing small counts.
    """

    n_iterations: int | None = None
    """Learner iterations."""
    epochs: float | None = None
    """Epochs at the base batch size B: ceil(epochs * n_train / B) iterations."""

    def __post_init__(self) -> None:
        _check((self.n_iterations is None) != (self.epochs is None),
               "set exactly one of n_iterations and epochs (the other to null)")
        check_finite(self, "")
        _check(self.n_iterations is None or 1 <= self.n_iterations <= MAX_ITERATIONS,
               f"n_iterations must be >= 1 and <= {MAX_ITERATIONS:_}, got {self.n_iterations}")
        _check(self.epochs is None or self.epochs > 0, f"epochs must be > 0, got {self.epochs}")

    def iterations(self, n_train: int, batch_size: int) -> int:
        """Learner iterations of this budget for a training split of ``n_train`` samples."""
        if self.n_iterations is not None:
            return self.n_iterations
        iterations = max(1, math.ceil(self.epochs * n_train / batch_size))
        _check(iterations <= MAX_ITERATIONS, f"{self.epochs} epochs of {n_train} samples at B = {batch_size} are "
                                             f"{iterations:_} iterations, more than {MAX_ITERATIONS:_}; lower epochs")
        return iterations


def check_count_range(n_min: int, n_max: int, where: str) -> None:
    """Raise a :class:`ConfigError` unless 1 <= n_min <= n_max <= MAX_COUNT (the bounds of per-modality counts)."""
    _check(1 <= n_min <= n_max <= MAX_COUNT,
           f"{where} needs 1 <= n_min <= n_max <= {MAX_COUNT:_}, got n_min={n_min}, n_max={n_max}")


def check_counts(values: Any, where: str) -> None:
    """Raise a :class:`ConfigError` unless every entry of ``values`` is a whole number in [0, MAX_COUNT].

    Counts are sample numbers: a fractional count (8.5) is refused rather than truncated, and a huge
    one rather than left to exhaust memory.
    """
    flat = values.tolist() if hasattr(values, "tolist") else values
    stack = [flat]
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(item)
            continue
        if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) \
                or item != int(item):
            raise ConfigError(f"{where} must hold whole numbers of samples, got {shown(values)}")
        if not 0 <= item <= MAX_COUNT:
            raise ConfigError(f"{where} must hold non-negative counts up to {MAX_COUNT:_}, got {shown(values)}")


def check_seeds(seeds: Iterable[int], where: str = "seeds") -> None:
    """Raise a :class:`ConfigError` unless ``seeds`` are distinct (a repeated seed repeats a run, not a sample)."""
    seeds = list(seeds)
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    _check(not repeated, f"{where} must be distinct, {repeated} given more than once: a repeated seed reruns the "
                         "same run and would narrow the interval without new evidence")


def check_workers(workers: int | None) -> None:
    """Raise a :class:`ConfigError` unless ``workers`` is None (the CPU count) or from 1 to :data:`MAX_WORKERS`."""
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise ConfigError(f"workers must be from 1 to {MAX_WORKERS}, got {workers}")


def check_distinct(values: Iterable[Any], where: str) -> None:
    """Raise a :class:`ConfigError` when a name is given twice (a repeated task, method or sampler reruns cells)."""
    values = list(values)
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    _check(not repeated, f"{where} must be distinct, {repeated} given more than once: a repeated {where.rstrip('s')} "
                         "reruns the same runs and would count them as new samples")


def check_n_envs(value: Any, where: str = "num_envs") -> int:
    """``value`` if it is a whole number (an int, not a bool) from 1 to :data:`MAX_ENVS`; else a ValueError."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where} must be a whole number from 1 to {MAX_ENVS}, got {shown(value)} "
                         f"({type(value).__name__})")
    if not 1 <= value <= MAX_ENVS:
        raise ValueError(f"{where} must be a whole number from 1 to {MAX_ENVS}, got {value}")
    return int(value)


def check_finite(config: Any, where: str) -> None:
    """Raise a :class:`ConfigError` when a float field of the dataclass ``config`` is NaN or inf.

    The one finiteness rule of float settings (:func:`_coerce` applies it to values read from files).
    """
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float):
            _finite(value, f"{where}.{f.name}" if where else f.name)


def _finite(value: float, path: str) -> float:
    if not math.isfinite(value):
        raise ConfigError(f"float settings must be finite numbers: config key '{path}' is {value!r}")
    return value


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = MAX_SHOWN
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = 8
_REPR.maxlevel = 3


def shown(value: Any) -> str:
    """``repr(value)`` bounded for an error message (nested and long values are cut with '...')."""
    text = _REPR.repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "..."


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build the dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            hint = did_you_mean(str(key), names) or f" (valid keys: {names})"
            raise ConfigError(f"unknown config key '{path[:MAX_SHOWN]}'{hint}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def checked_kwargs(func: Any, kwargs: dict[str, Any], where: str, reserved: tuple[str, ...] = ()) -> dict[str, Any]:
    """``kwargs`` of ``func`` (a function, class or partial) checked against its signature and annotations.

    An unknown key raises a :class:`ConfigError` that names the closest valid key; a value of the
    wrong type (for int, float, bool, str, tuple and Optional annotations) raises one that names the
    key, as :func:`from_dict` does for the config dataclasses. ``reserved`` are parameters the caller
    fills itself (they are not valid keys).
    """
    target = func.__init__ if inspect.isclass(func) else func
    try:
        parameters = inspect.signature(func).parameters
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return dict(kwargs)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [n for n, p in parameters.items() if p.kind in kinds and n not in reserved]
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    try:
        hints = typing.get_type_hints(getattr(target, "func", target))
    except Exception:  # unresolvable annotations of a user's function: check names only
        hints = {}
    checked = {}
    for key, value in kwargs.items():
        if key not in names and not open_ended:
            hint = did_you_mean(str(key), names) or (f" (valid keys: {names})" if names else " (it takes none)")
            raise ConfigError(f"unknown {where} key '{str(key)[:MAX_SHOWN]}'{hint}")
        checked[key] = _coerce(hints[key], value, f"{where}.{key}") if key in hints else value
    return checked


def _coerce(hint: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, path)
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, path)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{path}' must be a list, got {shown(value)}")
        (item,) = typing.get_args(hint)[:1]
        return tuple(_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{path}' must be a mapping, got {shown(value)}")
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{path}' must be true or false, got {shown(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"config key '{path}' must be an integer, got {shown(value)}")
        return int(value)
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)  # PyYAML reads 1e-4 (no dot) as a string
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{path}' must be a number, got {shown(value)}")
        return _finite(float(value), path)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{path}' must be a string, got {shown(value)}")
        return value
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """The plain-mapping form of a config (what gets written next to results)."""
    return dataclasses.asdict(config)
