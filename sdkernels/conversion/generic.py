"""The generic conversion: any block that holds a drop path gets its own methods rewritten (see ``rewrite.py``).

For a block instance, :func:`convert_block` finds the attributes holding drop-path modules (timm's,
torchvision's, Hugging Face's, sdkernels'), rewrites every method of the block's class that calls one
(``forward`` and any other: ``_residual``, ``_forward`` ...) so that each residual add they feed is one
:func:`sdkernels.drop_path_add` (with LayerScale fused where the branch is one), recompiles it in the
method's own globals with its closure cells (``__class__`` for a zero-argument ``super()``), re-applies its
decorators, and binds it to the instance (the class is untouched).  A method whose rewrite is not
provably exact keeps its source as written for that site (the reason goes to the report); a method that
cannot be rewritten at all stays the class's.

Rewrites are cached per class and block facts, so a ViT-B's twelve blocks compile once.  The bound
methods are :class:`RewrittenMethod` objects, which deep-copy and pickle by (class, method, facts).

At run time each fused site calls :func:`fuse`: when the drop path is not an active drop-path module
(eval mode, rate 0, ``nn.Identity``, a module with forward hooks) it computes the original expression
itself, so an inactive site is bitwise the original; otherwise one fused op, whose draw keeps the
original's samples (timm / torchvision: the same Bernoulli draw; Hugging Face: ``draw="hf"``).
"""
from __future__ import annotations

import ast
import inspect
import textwrap
import types
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import _fx
from ..functional import drop_path_add
from . import core
from .rewrite import RUNTIME, BlockFacts, Site, rewrite_method, snippet

__all__ = ["BlockState", "RewrittenMethod", "block_facts", "convert_block", "unconvert_block", "state_of", "fuse",
           "apply", "never_runs"]

_STATE = "_sdk_generic"  # the instance-dict key of a converted block's BlockState

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


# ---- the facts of a block ----------------------------------------------------------------------------

def _draws(m: nn.Module) -> bool:
    """Whether calling ``m`` may draw random numbers: it holds a Dropout with p > 0, a drop path, or a class
    named ``*Drop*`` / ``*Noise*`` (DropBlock ...)."""
    for sub in m.modules():
        if isinstance(sub, _DROPOUTS):
            if sub.p > 0:
                return True
        elif core.looks_like_drop_path(sub) or "Drop" in type(sub).__name__ or "Noise" in type(sub).__name__:
            return True
    return False


def _layer_scale_gamma(m: nn.Module) -> Optional[Tuple[torch.Tensor, Optional[int]]]:
    """``(gamma, channel_dim)`` when ``m(x)`` is ``x * gamma`` (a LayerScale module), else None.

    ``channel_dim`` None: ``gamma`` broadcasts as written (right-aligned; found per call by
    :func:`_channel_dim`).  Known: timm's ``LayerScale2d`` of ``timm.layers`` (``x * gamma.view(1, -1, 1, 1)``:
    dim 1), and any class named ``*LayerScale*`` whose forward is ``return x * self.<p>`` (or ``self.<p> * x``,
    or timm's ``x.mul_(self.<p>) if self.inplace else x * self.<p>`` with ``inplace`` False)."""
    cls = type(m)
    if cls.__module__ == "timm.layers.layer_scale" and cls.__name__ == "LayerScale2d":
        return (m.gamma, 1) if not m.inplace and isinstance(m.gamma, torch.Tensor) and m.gamma.dim() == 1 else None
    param = _LS_PARAMS.get(cls, False)
    if param is False:
        param = _single_product_param(cls)
        _LS_PARAMS[cls] = param
    if param is None or getattr(m, "inplace", False):
        return None
    g = getattr(m, param, None)
    return (g, None) if isinstance(g, torch.Tensor) else None


_LS_PARAMS: Dict[type, Optional[str]] = {}


def _product_param(e: ast.expr, x: str, selfname: str) -> Optional[str]:
    """``p`` when ``e`` is ``x * self.p`` or ``self.p * x``."""
    if not (isinstance(e, ast.BinOp) and isinstance(e.op, ast.Mult)):
        return None
    for a, g in ((e.left, e.right), (e.right, e.left)):
        if (isinstance(a, ast.Name) and a.id == x and isinstance(g, ast.Attribute)
                and isinstance(g.value, ast.Name) and g.value.id == selfname):
            return g.attr
    return None


def _single_product_param(cls: type) -> Optional[str]:
    """The parameter name when ``cls.forward`` is one ``return x * self.<p>`` (see :func:`_layer_scale_gamma`)."""
    fwd = next((vars(k)["forward"] for k in cls.__mro__ if "forward" in vars(k)), None)
    if "LayerScale" not in cls.__name__ or not inspect.isfunction(fwd):
        return None
    try:
        fn = ast.parse(textwrap.dedent(inspect.getsource(fwd))).body[0]
    except (OSError, TypeError, SyntaxError):
        return None
    args = [a.arg for a in fn.args.args]
    if len(args) != 2 or len(fn.body) != 1 or not isinstance(fn.body[0], ast.Return):
        return None
    e = fn.body[0].value
    if isinstance(e, ast.IfExp):  # x.mul_(self.p) if self.inplace else x * self.p
        t = e.test
        if not (isinstance(t, ast.Attribute) and t.attr == "inplace" and isinstance(t.value, ast.Name)
                and t.value.id == args[0]):
            return None
        e = e.orelse
    return _product_param(e, args[1], args[0])


def block_facts(block: nn.Module) -> Optional[BlockFacts]:
    """The facts of ``block`` the rewrite needs; None when it holds no drop-path module as an attribute."""
    dps, ls, noisy, quiet = set(), set(), set(), set()
    for name, child in block._modules.items():
        if child is None:
            continue
        if core.is_drop_path_module(child):
            dps.add(name)
        elif _layer_scale_gamma(child) is not None and not _draws(child):
            ls.add(name)
        elif _draws(child):
            noisy.add(name)
        else:
            quiet.add(name)
    if not dps:
        return None
    nones = {k for k, v in block.__dict__.items() if v is None and not k.startswith("_")}
    nones |= {k for k, v in block._modules.items() if v is None}
    params = {k for k, v in block._parameters.items() if v is not None}
    params |= {k for k, v in block._buffers.items() if v is not None}
    return BlockFacts(frozenset(dps), frozenset(ls), frozenset(noisy), frozenset(quiet), frozenset(nones),
                      frozenset(params))


# ---- compiling the rewrites (cached per class and facts) ---------------------------------------------

@dataclass
class ClassRewrite:
    """The rewrite of one class for one set of facts: compiled methods, sites, methods left as written."""

    methods: Dict[str, types.FunctionType]
    sites: List[Site]
    failed: Dict[str, str]  # method name -> why it keeps its original code


_CACHE: Dict[Tuple[type, BlockFacts], ClassRewrite] = {}


def _methods_calling(cls: type, names) -> Dict[str, object]:
    """The methods of ``cls`` (resolved through its MRO below ``nn.Module``) whose code names a drop path."""
    found: Dict[str, object] = {}
    seen = set()
    for klass in cls.__mro__:
        if klass in (nn.Module, object):
            break
        for attr, value in vars(klass).items():
            if attr in seen or attr.startswith("__") and attr.endswith("__"):
                continue
            seen.add(attr)
            fn = inspect.unwrap(value) if inspect.isfunction(value) else None
            if fn is not None and _code_names(fn.__code__) & names:
                found[attr] = value
    return found


def _code_names(code: types.CodeType) -> set:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


class _Mangle(ast.NodeTransformer):
    """Private-name mangling as the class body applied it (``self.__x`` -> ``self._Cls__x``)."""

    def __init__(self, cls_name: str):
        self.prefix = "_" + cls_name.lstrip("_")

    def _m(self, name: str) -> str:
        return self.prefix + name if name.startswith("__") and not name.endswith("__") and "." not in name else name

    def visit_Name(self, node):
        node.id = self._m(node.id)
        return node

    def visit_Attribute(self, node):
        self.generic_visit(node)
        node.attr = self._m(node.attr)
        return node

    def visit_arg(self, node):
        node.arg = self._m(node.arg)
        return node


def _compile(cls: type, attr: str, value, facts: BlockFacts):
    """``(function or None, sites, why not)`` for method ``attr`` of ``cls``."""
    qual = f"{cls.__qualname__}.{attr}"
    raw = inspect.unwrap(value)
    try:
        lines, first = inspect.getsourcelines(raw)
        filename = inspect.getsourcefile(raw) or "<sdkernels rewrite>"
    except (OSError, TypeError):
        return None, [], f"the source of {qual} is not available"
    try:
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except SyntaxError:
        return None, [], f"the source of {qual} does not parse on its own"
    fdef = tree.body[0] if tree.body else None
    if not isinstance(fdef, ast.FunctionDef) or fdef.name != raw.__name__:
        return None, [], f"the source of {qual} is not a plain def"
    decorators = fdef.decorator_list
    fdef.decorator_list = []
    owner = next(k for k in cls.__mro__ if attr in vars(k))
    _Mangle(owner.__name__).visit(fdef)  # the class body mangled ``__x``; the recompiled def is outside it
    fdef, sites = rewrite_method(fdef, facts, attr)
    if not any(s.fused for s in sites):
        return None, sites, ""
    # strip what the def would evaluate again (defaults, annotations): the original's are copied over
    for a in fdef.args.posonlyargs + fdef.args.args + fdef.args.kwonlyargs + [fdef.args.vararg, fdef.args.kwarg]:
        if a is not None:
            a.annotation = None
    fdef.returns = None
    fdef.args.defaults = [ast.Constant(None) for _ in fdef.args.defaults]
    fdef.args.kw_defaults = [None if d is None else ast.Constant(None) for d in fdef.args.kw_defaults]
    freevars = raw.__code__.co_freevars
    factory = ast.FunctionDef(
        name="__sdk_factory__",
        args=ast.arguments(posonlyargs=[], args=[ast.arg(arg=n) for n in (*freevars, RUNTIME)], vararg=None,
                           kwonlyargs=[], kw_defaults=[], kwarg=None, defaults=[]),
        body=[fdef, ast.Return(value=ast.Name(id=fdef.name, ctx=ast.Load()))], decorator_list=[], returns=None)
    module = ast.Module(body=[factory], type_ignores=[])
    ast.fix_missing_locations(module)
    ast.increment_lineno(module, first - 1)
    try:
        code = compile(module, filename, "exec")
    except SyntaxError as e:
        return None, sites, f"{qual} does not compile after the rewrite ({e.msg})"
    ns: dict = {}
    exec(code, raw.__globals__, ns)  # noqa: S102 - the class's own source, rewritten
    cells = dict(zip(freevars, raw.__closure__ or ()))
    try:
        values = [cells[n].cell_contents if n in cells else None for n in freevars]
        inner = ns["__sdk_factory__"](*values, _Runtime)
    except ValueError:  # an empty cell (a name bound later): keep the original
        return None, sites, f"{qual} closes over a name not yet bound"
    # share the original's closure cells (not copies), add the runtime's
    closure = tuple(cells[n] if n in cells else types.CellType(_Runtime) for n in inner.__code__.co_freevars)
    fn = types.FunctionType(inner.__code__, raw.__globals__, raw.__name__, raw.__defaults__, closure)
    fn.__kwdefaults__ = raw.__kwdefaults__
    fn.__qualname__, fn.__module__, fn.__doc__ = raw.__qualname__, raw.__module__, raw.__doc__
    fn.__annotations__ = dict(getattr(raw, "__annotations__", {}))
    for dec in reversed(decorators):
        try:
            fn = eval(compile(ast.Expression(dec), filename, "eval"), raw.__globals__)(fn)  # noqa: S307
        except Exception as e:  # noqa: BLE001 - a decorator of class scope, or one that refuses a copy
            return None, sites, f"decorator `{snippet(dec)}` of {qual} cannot be re-applied ({type(e).__name__})"
    return fn, sites, ""


def class_rewrite(cls: type, facts: BlockFacts) -> ClassRewrite:
    """The (cached) rewrite of ``cls`` for blocks with ``facts``."""
    key = (cls, facts)
    got = _CACHE.get(key)
    if got is None:
        methods, sites, failed = {}, [], {}
        for attr, value in _methods_calling(cls, facts.drop_paths).items():
            fn, found, why = _compile(cls, attr, value, facts)
            if why:
                failed[attr] = why
                found = [Site(s.name, s.method, s.line, s.reason or why, s.guards) for s in found] or [
                    Site(n, attr, 0, why) for n in facts.drop_paths if n in _code_names(inspect.unwrap(value).__code__)]
            elif fn is not None:
                methods[attr] = fn
            sites.extend(found)
        got = ClassRewrite(methods, sites, failed)
        _CACHE[key] = got
    return got


# ---- binding to an instance ------------------------------------------------------------------------

class RewrittenMethod:
    """A rewritten method bound to one block (in the block's ``__dict__``); pickles by name, not by code."""

    def __init__(self, block: nn.Module, attr: str, facts: BlockFacts, fn=None):
        self.block, self.attr, self.facts = block, attr, facts
        self.fn = fn if fn is not None else class_rewrite(type(block), facts).methods[attr]

    def __call__(self, *args, **kwargs):
        return self.fn(self.block, *args, **kwargs)

    def __getstate__(self):
        return {"block": self.block, "attr": self.attr, "facts": self.facts}

    def __setstate__(self, state):  # the compiled function is looked up at the first call (the block may
        self.block, self.attr, self.facts = state["block"], state["attr"], state["facts"]  # not be rebuilt yet)

    def __getattr__(self, name):
        if name == "fn":
            fn = class_rewrite(type(self.block), self.facts).methods[self.attr]
            self.__dict__["fn"] = fn
            return fn
        raise AttributeError(name)


@dataclass
class BlockState:
    """What convert did to one block: its settings, the facts, the sites (the report reads them)."""

    settings: core.Settings
    facts: BlockFacts
    methods: Tuple[str, ...]
    outcome: Dict[str, Tuple[str, str]]  # drop-path attribute -> (how, reason)
    skip_reason: str = ""  # under convert(skip=True): why its fused sites are not skipped


def state_of(block: nn.Module) -> Optional[BlockState]:
    return block.__dict__.get(_STATE)


def _eval_guard(test: ast.expr, block: nn.Module, selfname: str = "self"):
    """The value of an ``if`` test that reads only the block's attributes (``self.has_skip``, ``not ...``,
    ``... is None``, ``and`` / ``or`` of those), else None (unknown)."""
    if isinstance(test, ast.Attribute) and isinstance(test.value, ast.Name) and test.value.id == selfname:
        v = getattr(block, test.attr, _MISSING)
        if v is _MISSING or isinstance(v, torch.Tensor):
            return None
        return v
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        v = _eval_guard(test.operand, block, selfname)
        return None if v is None else not v
    if (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], (ast.Is, ast.IsNot))
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value is None):
        left = test.left
        if isinstance(left, ast.Attribute) and isinstance(left.value, ast.Name) and left.value.id == selfname:
            v = getattr(block, left.attr, _MISSING)
            if v is _MISSING:
                return None
            return (v is None) == isinstance(test.ops[0], ast.Is)
    if isinstance(test, ast.BoolOp):
        vals = [_eval_guard(v, block, selfname) for v in test.values]
        if isinstance(test.op, ast.And):
            return False if any(v is not None and not v for v in vals) else (True if all(vals) else None)
        return True if any(v for v in vals if v is not None) else (False if all(v is not None for v in vals) else None)
    return None


_MISSING = object()


def never_runs(site: Site, block: nn.Module) -> Optional[str]:
    """The test that keeps ``site`` from ever running in ``block`` (decided from the block's own flags)."""
    for test, taken in site.guards:
        v = _eval_guard(test, block)
        if v is not None and bool(v) != taken:
            return f"never runs: `{snippet(test)}` is {bool(v)} in this {type(block).__name__}"
    return None


def convert_block(block: nn.Module, settings: core.Settings) -> Optional[BlockState]:
    """Bind the rewritten methods of ``block``'s class to it; returns its state (None: no drop path)."""
    facts = block_facts(block)
    old = state_of(block)
    if old is not None and old.facts == facts and old.settings == settings:
        return old  # idempotent: the same bound methods
    unconvert_block(block)
    if facts is None:
        return None
    rewrite = class_rewrite(type(block), facts)
    outcome: Dict[str, Tuple[str, str]] = {}
    for name in sorted(facts.drop_paths):
        sites = [s for s in rewrite.sites if s.name == name]
        if not sites:
            outcome[name] = ("module", f"not called by name in {type(block).__name__}'s own methods (code reached "
                                       "through super() or another object keeps it)")
            continue
        live = [s for s in sites if never_runs(s, block) is None]
        bad = [s for s in live if not s.fused]
        if not live:
            outcome[name] = ("module", never_runs(sites[0], block))
        elif bad:
            reasons = "; ".join(dict.fromkeys(s.reason for s in bad))
            partly = f"{len(live) - len(bad)} of {len(live)} sites fused; " if len(bad) < len(live) else ""
            outcome[name] = ("module", partly + reasons)
        else:
            outcome[name] = ("fused", "")
    for attr in rewrite.methods:
        block.__dict__[attr] = RewrittenMethod(block, attr, facts, rewrite.methods[attr])
    state = BlockState(settings, facts, tuple(rewrite.methods), outcome)
    block.__dict__[_STATE] = state
    return state


def unconvert_block(block: nn.Module) -> None:
    state = block.__dict__.pop(_STATE, None)
    if state is not None:
        for attr in state.methods:
            if isinstance(block.__dict__.get(attr), RewrittenMethod):
                del block.__dict__[attr]


# ---- the runtime ----------------------------------------------------------------------------------

def _channel_dim(gamma, branch) -> Optional[int]:
    """The one dim of ``branch`` that ``gamma`` scales when ``gamma * branch`` broadcasts along it only."""
    if not isinstance(gamma, torch.Tensor) or gamma.dim() == 0 or gamma.dim() > branch.dim():
        return None
    big = [i for i, s in enumerate(gamma.shape) if s != 1]
    if len(big) != 1:
        return None
    cd = branch.dim() - gamma.dim() + big[0]
    return cd if cd != 0 and branch.shape[cd] == gamma.shape[big[0]] else None


def _eager(block, m, order, pieces, ls, inplace, flag):
    """The original expression of a site, evaluated as written (``flag`` False: its drop path did not run)."""
    vals = dict(zip(order, pieces))
    b = vals["b"]
    if "g" in vals:
        b = vals["g"] * b if order.index("g") < order.index("b") else b * vals["g"]
    if ls is not None:
        b = getattr(block, ls)(b)
    d = m(b) if flag else b
    r = vals["r"]
    if order[0] == "r":
        if inplace:
            r += d
            return r
        return r + d
    if inplace:
        d += r
        return d
    return d + r


def fuse(block, name: str, order: str, *pieces, ls: Optional[str] = None, inplace: bool = False, flag: bool = True):
    """One residual site of a rewritten method: the fused op where exact, else the original expression.

    ``order`` names ``pieces`` in source order: ``r`` the residual, ``b`` the branch, ``g`` a LayerScale
    tensor (``g * b`` or ``b * g``); ``ls``: a LayerScale module applied to ``b``; ``inplace``: the
    original adds in place into its first operand; ``flag`` False: a deferred drop path that did not run.
    """
    m = getattr(block, name)
    draw = core.active_draw(m) if flag else None
    if draw is None:
        return _eager(block, m, order, pieces, ls, inplace, flag)
    p, scale_by_keep, mode, rule = draw
    if len(order) == 2:
        res, b = pieces if order[0] == "r" else pieces[::-1]
        vals = None
    else:
        vals = dict(zip(order, pieces))
        res, b = vals["r"], vals["b"]
    gamma, cd = None, -1
    proxy = _fx.first_proxy(*pieces)
    if ls is not None:
        mod = getattr(block, ls)
        found = None if proxy is not None or core.has_forward_hooks(mod) else _layer_scale_gamma(mod)
        if found is not None:
            gamma, cd = found
            if cd is None:
                cd = _channel_dim(gamma, b) if isinstance(b, torch.Tensor) else None
        if cd is None:  # not a LayerScale the op can stand for: the module runs
            gamma, cd, b = None, -1, mod(b)
    elif vals is not None:  # a g * b branch
        gamma = vals["g"]
        cd = None if proxy is not None or not isinstance(b, torch.Tensor) else _channel_dim(gamma, b)
        if cd is None:
            return _eager(block, m, order, pieces, ls, inplace, flag)
    if proxy is None:
        if not (isinstance(res, torch.Tensor) and isinstance(b, torch.Tensor)) or res.shape != b.shape:
            return _eager(block, m, order, pieces, ls, inplace, flag)  # a broadcasting add
        if inplace:  # an in-place add keeps its target's dtype
            dt = torch.promote_types(res.dtype, b.dtype)
            if gamma is not None:
                dt = torch.promote_types(dt, gamma.dtype)
            if dt != (res.dtype if order[0] == "r" else b.dtype):
                return _eager(block, m, order, pieces, ls, inplace, flag)
    state = block.__dict__.get(_STATE)
    kw = {} if rule == "timm" else {"draw": rule}
    if gamma is not None:
        kw["layer_scale"], kw["channel_dim"] = gamma, cd
    return drop_path_add(res, b, p, training=True, mode=mode, scale_by_keep=scale_by_keep,
                         backend=state.settings.backend if state is not None else "auto", **kw)


def apply(block, name: str, v, flag: bool = True):
    """A deferred drop path on the path where its add did not run."""
    return getattr(block, name)(v) if flag else v


class _Runtime:
    """What rewritten code reaches through its free name ``RUNTIME`` (a closure cell, not a global)."""

    fuse = staticmethod(fuse)
    apply = staticmethod(apply)
