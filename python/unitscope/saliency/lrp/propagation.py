"""The forward pass that carries relevance backward: hooks put a node into the autograd graph after
each layer whose backward applies the layer's LRP rule (relevance flows where gradients would), fold
BatchNorm into the convolution before it, and a TorchFunctionMode finds what the model's forward
code does outside modules (residual additions `out += identity`, means, functional ReLUs) and gives
it a rule too, or refuses it by name. Nothing is ever left to a plain gradient by accident."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.overrides import TorchFunctionMode

from unitscope.saliency.lrp.rules import stabilize

AFFINE = (nn.Conv2d, nn.Linear)
BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)
PASS = (nn.ReLU, nn.ReLU6)                       # relevance passes unchanged (zennit's Pass)
NORM = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)      # each input's share x_i / sum x (zennit's Norm)
GRADIENT = (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout,
            nn.ZeroPad2d)                        # the gradient is the rule: winner-take-all, reshapes

_ADD = {torch.add, torch.Tensor.add, torch.Tensor.__add__, torch.Tensor.__radd__, torch.Tensor.__iadd__,
        torch.Tensor.add_}
_MEAN = {torch.mean, torch.Tensor.mean, torch.sum, torch.Tensor.sum, F.avg_pool2d, F.adaptive_avg_pool2d}
_RELU = {F.relu, torch.relu, torch.Tensor.relu, F.relu6, F.hardtanh}
_RELU_INPLACE = {F.relu_, torch.relu_, torch.Tensor.relu_, F.hardtanh_}
# mixing or non-linear functions with no rule: refused when called on relevance-carrying tensors
_REFUSED = {F.conv1d, F.conv2d, F.conv3d, F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__,
            torch.bmm, torch.mm, torch.einsum, torch.mul, torch.Tensor.mul, torch.Tensor.__mul__,
            torch.Tensor.__rmul__, torch.Tensor.__imul__, torch.Tensor.mul_, torch.div, torch.Tensor.div,
            torch.Tensor.__truediv__, torch.Tensor.__itruediv__, torch.sub, torch.Tensor.sub, torch.Tensor.__sub__,
            torch.Tensor.__rsub__, torch.Tensor.__isub__, torch.Tensor.__neg__, torch.neg, torch.sigmoid,
            torch.Tensor.sigmoid, torch.tanh, torch.Tensor.tanh, torch.exp, torch.softmax, F.softmax,
            F.log_softmax, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu, F.sigmoid,
            F.tanh, F.batch_norm, F.layer_norm, F.group_norm, F.instance_norm, F.interpolate, F.conv_transpose2d,
            F.normalize}
_INPLACE = {torch.Tensor.__iadd__, torch.Tensor.add_} | _RELU_INPLACE


class _Propagate(torch.autograd.Function):
    """Forward: returns `value` (the layer's output, computed already). Backward: the incoming
    gradient is the relevance of the output; `rule(R, *inputs)` gives the relevance of the inputs."""

    @staticmethod
    def forward(ctx, rule, value, *inputs):
        ctx.rule = rule
        ctx.save_for_backward(*inputs)
        return value.detach().clone()

    @staticmethod
    def backward(ctx, R):
        with torch.enable_grad():
            rel = ctx.rule(R, *ctx.saved_tensors)
        return (None, None, *(r.detach() for r in rel))


def propagate(rule, value, *inputs):
    return _Propagate.apply(rule, value, *inputs)


class AffineLayer:
    """A Conv2d/Linear module as z = f(x; W) + b, with a BatchNorm after it folded into W and b.
    Calling it runs the module's own forward (its padding etc.) with the weight given and no bias."""

    def __init__(self, module, bn=None):
        self.module = module
        W = module.weight.detach()
        b = None if module.bias is None else module.bias.detach()
        if bn is not None:
            scale = torch.rsqrt(bn.running_var.detach() + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.detach()
            b = (torch.zeros_like(bn.running_mean) if b is None else b) - bn.running_mean.detach()
            b = b * scale + (bn.bias.detach() if bn.bias is not None else 0)
            W = W * scale.view(-1, *([1] * (W.dim() - 1)))
        self.weight, self.bias = W, b
        self._zero = {} if module.bias is None else {"bias": torch.zeros_like(module.bias)}

    def __call__(self, x, weight, bias=None):
        z = functional_call(self.module, {"weight": weight, **self._zero}, (x,))
        if bias is not None:
            z = z + (bias.view(-1, *([1] * (z.dim() - 2))) if isinstance(self.module, nn.Conv2d) else bias)
        return z


def norm_rule(fn, eps):
    """Relevance of the inputs of z = fn(*xs) (a linear map: pooling, mean, sum of branches):
    x_k * d z / d x_k . R / z, each input's share of the output."""
    def rule(R, *xs):
        xs = [x.detach().requires_grad_(True) for x in xs]
        z = fn(*xs)
        gs = torch.autograd.grad(z, xs, R / stabilize(z, eps))
        return tuple(x * g for x, g in zip(xs, gs))
    return rule


def _pass(R, x):
    return (R,)


def _is_under(name, parents):
    return any(name.startswith(p + ".") for p in parents)


def check_model(model):
    """Raise a ValueError naming every leaf module that no LRP rule covers."""
    affine = [n for n, m in model.named_modules() if isinstance(m, AFFINE)]
    known = AFFINE + BATCHNORM + PASS + NORM + GRADIENT
    bad = [f"{n or '<model>'} ({type(m).__name__})" for n, m in model.named_modules()
           if not any(True for _ in m.children()) and not isinstance(m, known) and not _is_under(n, affine)]
    if bad:
        raise ValueError(f"LRP has no rule for the module(s) {', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}; "
                         f"rules exist for Conv2d, Linear, BatchNorm after them, ReLU, ReLU6, max/average pooling, "
                         f"Flatten, Identity, Dropout (eval)")


class Propagator(TorchFunctionMode):
    """`with Propagator(model, composite): out = model(x)`; then autograd.grad(out, x, R) after the
    block gives the relevance of x. The hooks are removed on exit (the rules' backward calls the
    modules again, which must not be hooked then)."""

    def __init__(self, model, composite):
        super().__init__()
        check_model(model)
        self.model, self.composite = model, composite
        self.names = {m: n for n, m in model.named_modules()}
        self.stack = []       # kinds of the modules running now, innermost last
        self.first_seen = False
        self.last = None      # (output, module, input, rule) of the last Conv2d/Linear: a BatchNorm may fold into it
        self.inputs = {}      # stored inputs of running ReLU modules (their in-place forward gets a copy)
        self.handles = []

    # ---- module hooks ---------------------------------------------------------------------------
    def _kind(self, m):
        if isinstance(m, AFFINE):
            return "affine"
        for kind, types in (("bn", BATCHNORM), ("pass", PASS), ("norm", NORM), ("grad", GRADIENT)):
            if isinstance(m, types):
                return kind
        return "container"

    def _pre(self, module, args):
        kind = self._kind(module)
        self.stack.append(kind)
        if kind == "pass" and args and isinstance(args[0], torch.Tensor):
            self.inputs.setdefault(module, []).append(args[0])
            return (args[0].clone(),) + tuple(args[1:])  # an in-place ReLU must not overwrite our input
        return None

    def _post(self, module, args, output):
        try:
            kind = self.stack[-1]
            if kind == "affine":
                return self._affine(module, args[0], output)
            if kind == "bn":
                return self._batchnorm(module, args[0], output)
            if kind == "pass":
                return propagate(_pass, output, self.inputs[module].pop())
            if kind == "norm":
                return propagate(norm_rule(module.forward, self.composite.stabilizer), output, args[0])
            return None
        finally:
            self.stack.pop()

    def _affine(self, module, x, output):
        rule = self.composite.rule_for(module, first=not self.first_seen)
        self.first_seen = True
        layer = AffineLayer(module)
        out = propagate(lambda R, xx: (rule.relevance(layer, xx, R),), output, x)
        self.last = (out, module, x, rule)
        return out

    def _batchnorm(self, bn, x, output):
        name = self.names.get(bn, "?")
        if self.last is None or x is not self.last[0]:
            raise ValueError(f"LRP folds each BatchNorm into the Conv2d/Linear right before it, but "
                             f"{name!r} ({type(bn).__name__}) does not take such a layer's output directly")
        if not bn.track_running_stats or bn.running_var is None:
            raise ValueError(f"BatchNorm {name!r} has no running statistics to fold into the layer before it")
        _, conv, conv_x, rule = self.last
        layer = AffineLayer(conv, bn)
        self.last = None
        return propagate(lambda R, xx: (rule.relevance(layer, xx, R),), output, conv_x)

    # ---- functions called by the model's own forward code ----------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.stack and self.stack[-1] != "container":
            return func(*args, **kwargs)  # inside a module that has its rule
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        live = [t for t in tensors if t.requires_grad]
        if not live:
            return func(*args, **kwargs)
        where = self._where()
        name = getattr(func, "__name__", str(func))
        if func in _ADD:
            if len(live) == 2 and len(tensors) == 2 and "alpha" not in kwargs:
                a, b = tensors
                if a.shape != b.shape:
                    raise ValueError(f"LRP has no rule for the broadcast addition {tuple(a.shape)} + "
                                     f"{tuple(b.shape)} in {where}")
                if func in _INPLACE:
                    a = a.clone()  # the rule keeps the summands; the model's tensor is overwritten below
                with torch.no_grad():
                    value = a + b
                out = propagate(norm_rule(lambda u, v: u + v, self.composite.stabilizer), value, a, b)
                return tensors[0].copy_(out) if func in _INPLACE else out
            return func(*args, **kwargs)  # x + constant: the relevance stays with x
        if func in _MEAN:
            x = args[0]
            rest = args[1:]
            with torch.no_grad():
                value = func(*args, **kwargs)
            return propagate(norm_rule(lambda u: func(u, *rest, **kwargs), self.composite.stabilizer), value, x)
        if func in _RELU or func in _RELU_INPLACE:
            x = args[0].clone() if func in _INPLACE else args[0]
            with torch.no_grad():
                value = func(x.clone(), *args[1:], **kwargs)
            out = propagate(_pass, value, x)
            return args[0].copy_(out) if func in _INPLACE else out
        if func in _REFUSED:
            raise ValueError(f"LRP has no rule for {name} called on activations in {where}; write it as a "
                             f"module with a rule (Conv2d, Linear, ReLU, pooling) or leave it out")
        return func(*args, **kwargs)

    def _where(self):
        return "the model's forward code" if not self._running else f"the forward code of {self._running[-1]!r}"

    # ---- entering and leaving -------------------------------------------------------------------
    def __enter__(self):
        affine = [n for n, m in self.model.named_modules() if isinstance(m, AFFINE)]
        self._running = []
        for n, m in self.model.named_modules():
            if _is_under(n, affine):
                continue  # covered by the layer's rule (e.g. the static padding of a 'same' conv)
            self.handles.append(m.register_forward_pre_hook(self._pre))
            self.handles.append(m.register_forward_hook(self._post))
            if self._kind(m) == "container":
                self.handles.append(m.register_forward_pre_hook(self._enter_named(n)))
                self.handles.append(m.register_forward_hook(self._leave_named))
        return super().__enter__()

    def _enter_named(self, name):
        def pre(module, args):
            self._running.append(name or "<model>")
        return pre

    def _leave_named(self, module, args, output):
        if self._running:
            self._running.pop()

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []
        return super().__exit__(*exc)
