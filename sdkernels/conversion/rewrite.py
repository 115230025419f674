"""The source rewrite of the generic conversion: a block method's residual adds, fused, with Python ``ast``.

:func:`rewrite_method` takes the source of one method of a block class and the facts of the block
(:class:`BlockFacts`: which attributes hold drop paths, LayerScale modules, modules that draw random
numbers) and returns the method's ``ast.FunctionDef`` with each residual add its drop paths feed made a
call of the runtime (``generic.fuse`` / ``generic.apply``, reached through the free name
:data:`RUNTIME`), plus one :class:`Site` per drop-path call found: fused, or left as written with the
construct that stopped it.  Forms matched (``dp`` a drop-path attribute, ``r`` the residual):

* ``r + self.dp(b)`` and ``self.dp(b) + r``, anywhere in an expression;
* ``r += self.dp(b)`` (``r`` a local name);
* the deferred ``v = self.dp(b)`` (optionally alone under ``if c:``) followed, in the same statement
  list, by a statement adding ``v`` (``v + r``, ``r + v``, ``v += r``), which may sit alone under an
  ``if`` (the drop path is then applied on the other path);
* a branch ``self.ls(b)`` (a LayerScale module) or ``g * b`` / ``b * g`` (``g`` a parameter of the
  block) becomes the fused op's ``layer_scale``.

Draw order: the fused op draws at the add.  Where the original draws earlier (``self.dp(b) + r``, the
deferred form), everything evaluated in between must be *quiet* (:meth:`Rewriter.quiet`: names,
attributes, arithmetic, shape methods of tensors, calls of the block's submodules that hold no
Dropout with p > 0, drop path or other ``*Drop*`` module): then no random number is drawn in between
and the same seed keeps the same samples.  Otherwise the site is left as written, with the reason.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Tuple

__all__ = ["RUNTIME", "BlockFacts", "Site", "Rewriter", "rewrite_method", "snippet"]

#: The free name through which rewritten code reaches the runtime (bound as a closure cell, never a global).
RUNTIME = "__sdk_runtime__"

# Tensor methods and functions that draw no random numbers (what may run between a draw and its add).
_QUIET_METHODS = frozenset((
    "reshape", "view", "permute", "transpose", "flatten", "unflatten", "contiguous", "squeeze", "unsqueeze",
    "expand", "expand_as", "view_as", "reshape_as", "to", "float", "half", "bfloat16", "type_as", "size", "dim",
    "mean", "sum", "mul", "add", "div", "sub", "chunk", "split", "narrow", "clone", "detach", "roll", "flip",
    "movedim", "unbind", "numel",
))
_QUIET_FUNCS = frozenset((
    "cat", "stack", "reshape", "permute", "transpose", "flatten", "pad", "interpolate", "avg_pool1d",
    "avg_pool2d", "avg_pool3d", "max_pool2d", "adaptive_avg_pool2d", "relu", "gelu", "silu", "roll", "len",
    "isinstance", "int", "float", "tuple", "list", "getattr", "hasattr",
))
_RESHAPES = frozenset(("reshape", "view", "permute", "transpose", "flatten", "unflatten", "contiguous", "squeeze",
                       "unsqueeze", "expand", "view_as", "reshape_as", "movedim", "narrow", "chunk", "split"))
_SCALES = frozenset(("mul", "mul_", "div", "div_"))


def snippet(node: ast.AST, limit: int = 70) -> str:
    """The source of ``node`` on one line, shortened."""
    text = " ".join(ast.unparse(node).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


@dataclass(frozen=True)
class BlockFacts:
    """What the rewrite needs to know of a block instance (also the key of the per-class cache).

    ``drop_paths``: attributes holding a drop-path module convert fuses; ``layer_scales``: submodules whose
    forward is ``x * gamma``; ``noisy``: submodules that may draw random numbers; ``quiet``: every other
    submodule; ``nones``: attributes that are None (their calls never run); ``params``: parameters
    and buffers (a ``g * b`` branch with such a ``g`` is a LayerScale).
    """

    drop_paths: FrozenSet[str]
    layer_scales: FrozenSet[str] = frozenset()
    noisy: FrozenSet[str] = frozenset()
    quiet: FrozenSet[str] = frozenset()
    nones: FrozenSet[str] = frozenset()
    params: FrozenSet[str] = frozenset()


@dataclass
class Site:
    """One call of a drop-path attribute in a method: fused (``reason == ""``) or not, and why.

    ``guards``: the ``if`` tests around it, as ``(test, taken)`` (``taken`` False: the ``else`` side),
    from which convert decides a site that never runs (``if self.has_skip:`` with ``has_skip`` False).
    """

    name: str
    method: str
    line: int
    reason: str = ""
    guards: Tuple[Tuple[ast.expr, bool], ...] = ()

    @property
    def fused(self) -> bool:
        return not self.reason


def _rt_call(func: str, args: List[ast.expr], keywords: Dict[str, ast.expr]) -> ast.Call:
    return ast.Call(func=ast.Attribute(value=ast.Name(id=RUNTIME, ctx=ast.Load()), attr=func, ctx=ast.Load()),
                    args=args, keywords=[ast.keyword(arg=k, value=v) for k, v in keywords.items()])


def _loads(node: ast.AST, name: str) -> List[ast.Name]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Name) and n.id == name]


@dataclass
class _Frame:
    guards: Tuple[Tuple[ast.expr, bool], ...] = ()
    in_loop: bool = False


class Rewriter:
    """Rewrites one method (see the module docstring); ``sites`` lists what it found."""

    def __init__(self, facts: BlockFacts, selfname: str, method: str, tree: ast.FunctionDef):
        self.facts = facts
        self.selfname = selfname
        self.method = method
        self.tree = tree
        self.sites: List[Site] = []
        self._flags = 0
        self._handled: Dict[int, str] = {}  # id(dp call node) -> reason it was left as written ("" fused)
        self._guards: Dict[int, Tuple] = {}

    # ---- recognisers -------------------------------------------------------------------------------
    def _self_attr(self, node) -> Optional[str]:
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == self.selfname
                and isinstance(node.ctx, ast.Load)):
            return node.attr
        return None

    def dp_call(self, node) -> Optional[str]:
        """The attribute name when ``node`` is ``self.<drop path>(one positional argument)``."""
        if not isinstance(node, ast.Call) or node.keywords or len(node.args) != 1 or isinstance(node.args[0],
                                                                                               ast.Starred):
            return None
        name = self._self_attr(node.func)
        return name if name in self.facts.drop_paths else None

    def _is_dp_ref(self, node) -> bool:
        return isinstance(node, ast.Call) and self._self_attr(node.func) in self.facts.drop_paths

    def branch(self, arg: ast.expr):
        """(order letters, pieces, layer-scale module name) of a drop path's argument."""
        if isinstance(arg, ast.Call) and len(arg.args) == 1 and not arg.keywords \
                and not isinstance(arg.args[0], ast.Starred) and self._self_attr(arg.func) in self.facts.layer_scales:
            return "b", [arg.args[0]], self._self_attr(arg.func)
        if isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Mult):
            if self._self_attr(arg.left) in self.facts.params:
                return "gb", [arg.left, arg.right], None
            if self._self_attr(arg.right) in self.facts.params:
                return "bg", [arg.left, arg.right], None
        return "b", [arg], None

    def quiet(self, node: ast.AST) -> bool:
        """Whether evaluating ``node`` provably draws no random number (see the module docstring)."""
        if node is None:
            return True
        if isinstance(node, (ast.Name, ast.Constant)):
            return True
        if isinstance(node, ast.Attribute):
            return self.quiet(node.value)
        if isinstance(node, ast.Call):
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                return False
            if not all(self.quiet(a) for a in node.args) or not all(self.quiet(k.value) for k in node.keywords):
                return False
            name = self._self_attr(node.func)
            if name is not None:
                return name in self.facts.quiet or name in self.facts.layer_scales or name in self.facts.nones
            f = node.func
            if isinstance(f, ast.Attribute):
                if f.attr in _QUIET_FUNCS and isinstance(f.value, ast.Name) and f.value.id in ("torch", "F"):
                    return True
                return f.attr in _QUIET_METHODS and self.quiet(f.value)
            return isinstance(f, ast.Name) and f.id in _QUIET_FUNCS
        if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp, ast.Subscript, ast.Slice,
                             ast.Tuple, ast.List, ast.Starred)):
            return all(self.quiet(c) for c in ast.iter_child_nodes(node)
                       if not isinstance(c, (ast.operator, ast.unaryop, ast.boolop, ast.cmpop, ast.expr_context)))
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr)):
            targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
            return all(self.quiet(t) for t in targets) and self.quiet(node.value)
        if isinstance(node, ast.If):
            return self.quiet(node.test) and all(self.quiet(s) for s in node.body + node.orelse)
        return isinstance(node, ast.Pass)

    # ---- the expression forms --------------------------------------------------------------------
    def _fuse_expr(self, name, order, pieces, ls, frame: _Frame, call: ast.Call, **kw) -> ast.Call:
        keywords = dict(kw)
        if ls is not None:
            keywords["ls"] = ast.Constant(ls)
        self._handled[id(call)] = ""
        self.sites.append(Site(name, self.method, call.lineno, "", frame.guards))
        return _rt_call("fuse", [ast.Name(id=self.selfname, ctx=ast.Load()), ast.Constant(name), ast.Constant(order),
                                 *pieces], keywords)

    def expr(self, node: ast.AST, frame: _Frame) -> ast.AST:
        """``node`` with its ``r + dp(b)`` / ``dp(b) + r`` adds fused (inner ones first)."""
        outer = self

        class T(ast.NodeTransformer):
            def visit_Lambda(self, n):  # a lambda is its own scope: its adds are fused the same way
                return self.generic_visit(n)

            def visit_BinOp(self, n):
                self.generic_visit(n)
                if not isinstance(n.op, ast.Add):
                    return n
                name = outer.dp_call(n.right)
                if name is not None:
                    order, pieces, ls = outer.branch(n.right.args[0])
                    new = outer._fuse_expr(name, "r" + order, [n.left, *pieces], ls, frame, n.right)
                    return ast.copy_location(new, n)
                name = outer.dp_call(n.left)
                if name is not None and outer.quiet(n.right):
                    order, pieces, ls = outer.branch(n.left.args[0])
                    new = outer._fuse_expr(name, order + "r", [*pieces, n.right], ls, frame, n.left)
                    return ast.copy_location(new, n)
                return n

        return T().visit(node)

    # ---- statements --------------------------------------------------------------------------------
    def _def_of(self, stmt) -> Optional[Tuple[str, ast.Call, Optional[ast.If]]]:
        """``(v, dp call, if)`` when ``stmt`` is ``v = self.dp(b)`` or ``if c: v = self.dp(b)``."""
        inner, guard = stmt, None
        if isinstance(stmt, ast.If) and len(stmt.body) == 1 and not stmt.orelse:
            inner, guard = stmt.body[0], stmt
        if (isinstance(inner, ast.Assign) and len(inner.targets) == 1 and isinstance(inner.targets[0], ast.Name)
                and self.dp_call(inner.value) is not None):
            return inner.targets[0].id, inner.value, guard
        return None

    def _use_add(self, stmt, v: str) -> Optional[Tuple[ast.BinOp, bool]]:
        """``(the add node, in place)`` when ``stmt`` adds ``v`` once and rebinds ``v`` or returns."""
        if isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Add) and isinstance(stmt.target, ast.Name) \
                and stmt.target.id == v and not _loads(stmt.value, v):
            return None, True
        if not isinstance(stmt, (ast.Assign, ast.Return)) or stmt.value is None:
            return None
        uses = _loads(stmt.value, v)
        if len(uses) != 1:
            return None
        for n in ast.walk(stmt.value):
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add) and (n.left is uses[0] or n.right is uses[0]):
                return n, False
        return None

    def _why_not_added(self, stmt, v: str) -> str:
        """The construct that uses the drop path's output ``v`` in ``stmt`` (when it is not a plain add)."""
        if isinstance(stmt, ast.Return) and isinstance(stmt.value, ast.Name) and stmt.value.id == v:
            return f"no residual add: returned as is: `{snippet(stmt)}`"
        for n in ast.walk(stmt):  # an add of a slice or reshape of v
            if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Add):
                for side in (n.left, n.right):
                    if (isinstance(side, ast.Subscript) and _loads(side.value, v)) or (
                            isinstance(side, ast.Call) and isinstance(side.func, ast.Attribute)
                            and side.func.attr in _RESHAPES and _loads(side.func.value, v)):
                        return f"reshape or slice between drop path and add: `{snippet(stmt)}`"
        for n in ast.walk(stmt):
            if isinstance(n, ast.BinOp) and isinstance(n.op, (ast.Mult, ast.Div)) and (_loads(n.left, v)
                                                                                    or _loads(n.right, v)):
                return f"scale after drop path: `{snippet(stmt)}`"
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute):
                on_v = _loads(n.func.value, v)
                if on_v and n.func.attr in _SCALES:
                    return f"scale after drop path: `{snippet(stmt)}`"
                if on_v and n.func.attr in _RESHAPES:
                    return f"reshape or slice between drop path and add: `{snippet(stmt)}`"
                if n.func.attr in ("cat", "stack") and any(_loads(a, v) for a in n.args):
                    return f"no residual add: concatenated: `{snippet(stmt)}`"
            if isinstance(n, ast.Subscript) and _loads(n.value, v):
                return f"reshape or slice between drop path and add: `{snippet(stmt)}`"
        return f"no residual add: the output feeds `{snippet(stmt)}`"

    def _deferred(self, stmts: List[ast.stmt], i: int, frame: _Frame) -> Optional[Tuple[List[ast.stmt], int]]:
        """The deferred form starting at ``stmts[i]``: (replacement statements, index after the use), or None
        (with the reason recorded for the drop-path call when it is a definition that cannot be fused)."""
        d = self._def_of(stmts[i])
        if d is None:
            return None
        v, call, guard = d
        name = self.dp_call(call)
        def_guards = frame.guards + (((guard.test, True),) if guard is not None else ())

        def fail(reason):  # the first reason found stands (an inner statement list would see less)
            self._handled.setdefault(id(call), reason)
            self._guards.setdefault(id(call), def_guards)
            return None

        j = i + 1
        while j < len(stmts) and not _loads(stmts[j], v):
            if not self.quiet(stmts[j]):
                return fail(f"may draw random numbers between drop path and add: `{snippet(stmts[j])}`")
            j += 1
        if j == len(stmts):
            return fail(f"no residual add of the drop path's output `{v}` in the statements that follow it")
        use, use_if = stmts[j], None
        if isinstance(use, ast.If) and len(use.body) == 1 and not use.orelse and not _loads(use.test, v):
            use_if, use = use, use.body[0]
        found = self._use_add(use, v)
        if found is None:
            return fail(self._why_not_added(use, v))
        add, inplace = found
        rebinds = (isinstance(use, (ast.Return, ast.AugAssign))
                   or isinstance(use, ast.Assign) and any(isinstance(t, ast.Name) and t.id == v for t in use.targets))
        if not rebinds and (frame.in_loop or use_if is not None or any(
                n.lineno > use.end_lineno for n in _loads(self.tree, v) if isinstance(n.ctx, ast.Load))):
            return fail(f"the drop path's output `{v}` is read again after its add: `{snippet(use)}`")
        if use_if is not None and not self.quiet(use_if.test):
            return fail(f"may draw random numbers between drop path and add: `{snippet(use_if.test)}`")
        if not self.quiet(use.value):  # evaluated after the original's draw, before the fused one
            return fail(f"may draw random numbers between drop path and add: `{snippet(use)}`")
        # the rewrite
        out: List[ast.stmt] = []
        kw: Dict[str, ast.expr] = {}
        if guard is not None:
            flag = f"__sdk_flag{self._flags}__"
            self._flags += 1
            out.append(ast.Assign(targets=[ast.Name(id=flag, ctx=ast.Store())], value=ast.Constant(False)))
            body = [ast.Assign(targets=[ast.Name(id=v, ctx=ast.Store())], value=self.expr(call.args[0], frame)),
                    ast.Assign(targets=[ast.Name(id=flag, ctx=ast.Store())], value=ast.Constant(True))]
            out.append(ast.If(test=guard.test, body=body, orelse=[]))
            kw["flag"] = ast.Name(id=flag, ctx=ast.Load())
        else:
            out.append(ast.Assign(targets=[ast.Name(id=v, ctx=ast.Store())], value=self.expr(call.args[0], frame)))
        out.extend(stmts[i + 1:j])
        vname = ast.Name(id=v, ctx=ast.Load())
        use_frame = _Frame(frame.guards + (((use_if.test, True),) if use_if is not None else ()), frame.in_loop)
        self._handled[id(call)] = ""
        self.sites.append(Site(name, self.method, call.lineno, "", def_guards + use_frame.guards[len(frame.guards):]))
        if inplace:
            new_use = ast.Assign(targets=[ast.Name(id=v, ctx=ast.Store())],
                                 value=_rt_call("fuse", [ast.Name(id=self.selfname, ctx=ast.Load()), ast.Constant(name),
                                                         ast.Constant("br"), vname, use.value],
                                                dict(kw, inplace=ast.Constant(True))))
        else:
            v_left = isinstance(add.left, ast.Name) and add.left.id == v
            pieces = [vname, add.right] if v_left else [add.left, vname]
            repl = _rt_call("fuse", [ast.Name(id=self.selfname, ctx=ast.Load()), ast.Constant(name),
                                     ast.Constant("br" if v_left else "rb"), *pieces], kw)

            class Swap(ast.NodeTransformer):
                def visit_BinOp(self, n):
                    return ast.copy_location(repl, n) if n is add else self.generic_visit(n)

            new_use = Swap().visit(use)
        ast.copy_location(new_use, use)
        if use_if is not None:
            els = ast.Assign(targets=[ast.Name(id=v, ctx=ast.Store())],
                             value=_rt_call("apply", [ast.Name(id=self.selfname, ctx=ast.Load()), ast.Constant(name),
                                                      ast.Name(id=v, ctx=ast.Load())], kw))
            new_use = ast.copy_location(ast.If(test=use_if.test, body=[new_use], orelse=[els]), use_if)
        out.append(new_use)
        return out, j + 1

    def block(self, stmts: List[ast.stmt], frame: _Frame) -> List[ast.stmt]:
        out: List[ast.stmt] = []
        i = 0
        while i < len(stmts):
            done = self._deferred(stmts, i, frame)
            if done is not None:
                new, i = done
                out.extend(new)
                continue
            out.append(self.stmt(stmts[i], frame))
            i += 1
        return out

    def stmt(self, s: ast.stmt, frame: _Frame) -> ast.stmt:
        if isinstance(s, ast.AugAssign) and isinstance(s.op, ast.Add) and isinstance(s.target, ast.Name):
            name = self.dp_call(s.value)
            if name is not None:
                order, pieces, ls = self.branch(s.value.args[0])
                pieces = [self.expr(p, frame) for p in pieces]
                value = self._fuse_expr(name, "r" + order, [ast.Name(id=s.target.id, ctx=ast.Load()), *pieces], ls,
                                        frame, s.value, inplace=ast.Constant(True))
                return ast.copy_location(ast.Assign(targets=[ast.Name(id=s.target.id, ctx=ast.Store())],
                                                    value=value), s)
        if isinstance(s, ast.If):
            s.test = self.expr(s.test, frame)
            s.body = self.block(s.body, _Frame(frame.guards + ((s.test, True),), frame.in_loop))
            s.orelse = self.block(s.orelse, _Frame(frame.guards + ((s.test, False),), frame.in_loop))
            return s
        if isinstance(s, (ast.For, ast.AsyncFor, ast.While)):
            for f in ("iter", "test"):
                if hasattr(s, f):
                    setattr(s, f, self.expr(getattr(s, f), frame))
            loop = _Frame(frame.guards, True)
            s.body = self.block(s.body, loop)
            s.orelse = self.block(s.orelse, loop)
            return s
        if isinstance(s, (ast.With, ast.AsyncWith)):
            for item in s.items:
                item.context_expr = self.expr(item.context_expr, frame)
            s.body = self.block(s.body, frame)
            return s
        if isinstance(s, ast.Try) or type(s).__name__ == "TryStar":
            s.body = self.block(s.body, frame)
            for h in s.handlers:
                h.body = self.block(h.body, frame)
            s.orelse = self.block(s.orelse, frame)
            s.finalbody = self.block(s.finalbody, frame)
            return s
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)):
            s.body = self.block(s.body, _Frame())
            return s
        if isinstance(s, ast.ClassDef):
            return s
        return self.expr(s, frame)

    # ---- what was left as written --------------------------------------------------------------------
    def leftovers(self, tree: ast.AST) -> None:
        """A site with a reason for each drop-path call the rewrite left in ``tree``."""
        parents: Dict[int, ast.AST] = {}
        guards: Dict[int, Tuple] = {}

        def walk(node, g):
            for field_name, value in ast.iter_fields(node):
                children = value if isinstance(value, list) else [value]
                for child in children:
                    if not isinstance(child, ast.AST):
                        continue
                    parents[id(child)] = node
                    cg = g
                    if isinstance(node, ast.If) and field_name in ("body", "orelse"):
                        cg = g + ((node.test, field_name == "body"),)
                    guards[id(child)] = cg
                    walk(child, cg)

        walk(tree, ())
        for node in ast.walk(tree):
            if not self._is_dp_ref(node):
                continue
            name = self._self_attr(node.func)
            reason = self._handled.get(id(node))
            if reason == "":
                continue
            g = self._guards.get(id(node), guards.get(id(node), ()))
            if reason is None:
                reason = self._context_reason(node, parents)
            self.sites.append(Site(name, self.method, node.lineno, reason, g))

    def _context_reason(self, call: ast.Call, parents) -> str:
        if self.dp_call(call) is None:
            return f"drop path called with other arguments: `{snippet(call)}`"
        node, prev = parents.get(id(call)), call
        while node is not None and not isinstance(node, ast.stmt):
            if isinstance(node, ast.BinOp):
                if isinstance(node.op, ast.Add):
                    other = node.right if node.left is prev else node.left
                    return f"may draw random numbers between drop path and add: `{snippet(other)}`"
                if isinstance(node.op, (ast.Mult, ast.Div)):
                    return f"scale after drop path: `{snippet(node)}`"
            if isinstance(node, ast.Subscript) and node.value is prev:
                return f"reshape or slice between drop path and add: `{snippet(node)}`"
            if isinstance(node, ast.Attribute) and node.value is prev:
                if node.attr in _SCALES:
                    return f"scale after drop path: `{snippet(parents.get(id(node), node))}`"
                return f"reshape or slice between drop path and add: `{snippet(parents.get(id(node), node))}`"
            if isinstance(node, ast.Call) and prev is not node.func:
                f = node.func
                fname = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if fname in ("cat", "stack"):
                    return f"no residual add: concatenated: `{snippet(node)}`"
                if self._self_attr(f) is not None:
                    return f"scale after drop path: `{snippet(node)}`"
            if isinstance(node, (ast.List, ast.Tuple)):
                p = parents.get(id(node))
                if isinstance(p, ast.Call) and getattr(p.func, "attr", getattr(p.func, "id", "")) in ("cat", "stack"):
                    return f"no residual add: concatenated: `{snippet(p)}`"
            prev, node = node, parents.get(id(node))
        stmt = node if node is not None else call
        if isinstance(stmt, ast.AugAssign) and isinstance(stmt.op, ast.Add):
            return f"in-place add into an attribute or item: `{snippet(stmt)}`"
        return f"no residual add: `{snippet(stmt)}`"


def rewrite_method(tree: ast.FunctionDef, facts: BlockFacts, method: str) -> Tuple[ast.FunctionDef, List[Site]]:
    """``tree`` (a method's ``FunctionDef``, changed in place) rewritten, and its sites."""
    args = tree.args.posonlyargs + tree.args.args
    if not args:
        return tree, []
    rw = Rewriter(facts, args[0].arg, method, tree)
    tree.body = rw.block(tree.body, _Frame())
    rw.leftovers(tree)
    rw.sites.sort(key=lambda s: s.line)
    return tree, rw.sites
