"""torch.fx and TorchScript: every sdkernels function a model calls traces as one leaf node; scripting
stops with a clear error.

``torch.fx.symbolic_trace`` (and what is built on it: torchvision's
``create_feature_extractor``, timm's FX feature extraction) runs a module's
``forward`` with :class:`torch.fx.Proxy` objects in place of tensors.  The
public functions cannot check or draw on a Proxy, so each of them starts with
one ``isinstance`` test and, when an argument is a Proxy, records itself as a
single ``call_function`` node instead of running (torchvision does the same
with ``torch.fx.wrap("stochastic_depth")``).  The modules need nothing of their
own: their ``forward`` calls the functions with their attributes, so
``training`` and ``p`` are frozen into the graph as constants, as torchvision's
``StochasticDepth`` is (``create_feature_extractor`` traces a train and an eval
graph for that reason).

A callable argument (the branch ``fn`` of ``drop_path_residual``) is recorded
as a ``get_attr`` of the submodule it is, so the traced ``GraphModule`` owns it.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch.fx import Proxy

__all__ = ["Proxy", "first_proxy", "record", "NotScriptable"]


def first_proxy(*values) -> Optional[Proxy]:
    """The first :class:`torch.fx.Proxy` among ``values`` (None when tracing is not under way)."""
    for v in values:
        if isinstance(v, Proxy):
            return v
    return None


def _module_arg(tracer, value, name: str):
    """A submodule argument as a ``get_attr`` node of the traced root (anything else unchanged)."""
    if not isinstance(value, torch.nn.Module):
        if callable(value) and not isinstance(value, (Proxy, torch.Tensor)):
            raise TypeError(
                f"sdkernels: under torch.fx tracing {name} must be a submodule of the traced module "
                f"(an nn.Module, e.g. sdkernels.nn.StochasticResidual's branch), got {type(value).__name__}: "
                "a plain function or lambda cannot be recorded in a graph"
            )
        return value
    try:
        path = tracer.path_of_module(value)
    except NameError as e:
        raise TypeError(
            f"sdkernels: under torch.fx tracing {name} must be a submodule of the traced module; "
            f"this {type(value).__name__} is not installed in it ({e})"
        ) from None
    return tracer.create_proxy("get_attr", path, (), {})


def record(proxy: Proxy, target: Callable, args: tuple, kwargs: dict, *, modules=()) -> Proxy:
    """Record ``target(*args, **kwargs)`` as one ``call_function`` node of ``proxy``'s graph.

    ``modules`` names the keyword arguments that may hold a submodule (recorded
    as ``get_attr``).  An explicit ``generator`` cannot live in a graph: TypeError.
    """
    tracer = proxy.tracer
    if kwargs.get("generator") is not None:
        raise TypeError(
            "sdkernels: generator= cannot be recorded in a torch.fx graph; leave it None and seed torch"
        )
    kwargs = dict(kwargs)
    for name in modules:
        if name in kwargs:
            kwargs[name] = _module_arg(tracer, kwargs[name], name)
    return tracer.create_proxy("call_function", target, args, kwargs)


class NotScriptable:
    """Mixin of the sdkernels modules: ``torch.jit.script`` calls ``__prepare_scriptable__`` first, and
    these modules cannot be scripted (their fused ops are Python-level custom ops), so say so there
    instead of failing deep inside the compiler."""

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"sdkernels: torch.jit.script cannot compile {type(self).__name__} (its fused ops are Python-level "
            "custom ops); use torch.compile, or sdkernels.unconvert(model) for a model converted by sdkernels.convert"
        )
