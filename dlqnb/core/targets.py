"""The one vocabulary of target libraries: which execution environment each belongs to, and its MATLAB name.

Two kinds of library share these names. The plan's library is what a quantization target's types and
emulation follow: ``"cudnn"`` for the ``"gpu"`` target (MATLAB's ``coder.DeepLearningConfig('cudnn')``)
and ``"onnxruntime"`` for the ``"cpu"`` target. The deployment libraries are what
:class:`dlqnb.deploy.DeploymentConfig` generates code for and the runners run: ``"tensorrt"`` (gpu),
``"onnxruntime"`` and ``"openvino"`` (cpu; OpenVINO runs on oneDNN, MATLAB's ``'mkldnn'``), and
``"auto"``, the CPU library a measured trial chooses among :data:`CPU_LIBRARIES`.

Example:
    >>> environment_of("openvino"), library("openvino").matlab_name
    ('cpu', 'mkldnn')
    >>> plan_library("gpu"), DEPLOYMENT_LIBRARIES
    ('cudnn', ('tensorrt', 'onnxruntime', 'openvino', 'auto'))
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "CPU_LIBRARIES",
    "DEPLOYMENT_LIBRARIES",
    "ENVIRONMENTS",
    "LIBRARIES",
    "PLAN_LIBRARY",
    "TargetLibrary",
    "deployment_library",
    "environment_of",
    "library",
    "plan_library",
]

#: The execution environments (quantization targets).
ENVIRONMENTS = ("gpu", "cpu")


@dataclass(frozen=True)
class TargetLibrary:
    """One target library.

    Attributes:
        name: dlqnb's name, the string users pass and see.
        environment: The execution environment it runs: ``"gpu"`` or ``"cpu"``.
        matlab_name: The name of MATLAB's ``coder.DeepLearningConfig`` target for it, or ``None``
            where MATLAB has none.
        plan: It is the library a quantization plan types and emulates for its environment.
        deployment: Code can be generated for it and a runner runs it.

    Example:
        >>> library("tensorrt")
        TargetLibrary(name='tensorrt', environment='gpu', matlab_name='tensorrt', plan=False, deployment=True)
    """

    name: str
    environment: str
    matlab_name: str | None
    plan: bool = False
    deployment: bool = False


#: Every target library by name; the deployment ones in the order users see them listed.
LIBRARIES: dict[str, TargetLibrary] = {
    entry.name: entry
    for entry in (
        TargetLibrary("cudnn", "gpu", "cudnn", plan=True),
        TargetLibrary("tensorrt", "gpu", "tensorrt", deployment=True),
        TargetLibrary("onnxruntime", "cpu", None, plan=True, deployment=True),
        TargetLibrary("openvino", "cpu", "mkldnn", deployment=True),
        # Not a library of its own: the CPU library the trial of dlqnb.deploy.backend_choice measures fastest.
        TargetLibrary("auto", "cpu", None, deployment=True),
    )
}

#: The library each environment's plan types and emulation follow.
PLAN_LIBRARY: dict[str, str] = {entry.environment: entry.name for entry in LIBRARIES.values() if entry.plan}

#: The libraries :class:`dlqnb.deploy.DeploymentConfig` accepts.
DEPLOYMENT_LIBRARIES: tuple[str, ...] = tuple(name for name, entry in LIBRARIES.items() if entry.deployment)

#: The CPU libraries ``"auto"`` chooses between.
CPU_LIBRARIES: tuple[str, ...] = ("onnxruntime", "openvino")


def library(name: str) -> TargetLibrary:
    """The entry of a target library.

    Args:
        name: A name of :data:`LIBRARIES`.

    Raises:
        ValueError: An unknown name; the message lists the known ones.

    Example:
        >>> library("cudnn").environment
        'gpu'
    """
    if name not in LIBRARIES:
        raise ValueError(f"unknown target library {name!r}; the target libraries are {sorted(LIBRARIES)}")
    return LIBRARIES[name]


def environment_of(name: str) -> str:
    """The execution environment (``"gpu"`` or ``"cpu"``) a target library runs.

    Example:
        >>> environment_of("tensorrt")
        'gpu'
    """
    return library(name).environment


def plan_library(environment: str) -> str:
    """The library a plan for ``environment`` follows: ``"cudnn"`` (gpu) or ``"onnxruntime"`` (cpu).

    Raises:
        ValueError: Not ``"gpu"`` or ``"cpu"``.

    Example:
        >>> plan_library("cpu")
        'onnxruntime'
    """
    if environment not in PLAN_LIBRARY:
        raise ValueError(f"execution environment must be one of {list(ENVIRONMENTS)}, got {environment!r}")
    return PLAN_LIBRARY[environment]


def deployment_library(name: object, argument: str = "target_library") -> TargetLibrary:
    """The entry of a deployment library, or the error that names ``argument`` and the choices.

    Example:
        >>> deployment_library("cudnn")
        Traceback (most recent call last):
        ...
        ValueError: target_library must be one of ['auto', 'onnxruntime', 'openvino', 'tensorrt'], got 'cudnn'
    """
    entry = LIBRARIES.get(name) if isinstance(name, str) else None
    if entry is None or not entry.deployment:
        raise ValueError(f"{argument} must be one of {sorted(DEPLOYMENT_LIBRARIES)}, got {name!r}")
    return entry
