"""bn2d for PyTorch: a drop-in ``torch.nn.BatchNorm2d`` running bn2d's kernels.

    import bn2d.torch
    model = bn2d.torch.convert(model)   # every nn.BatchNorm2d now runs bn2d's kernels

``BatchNorm2d`` is a subclass of ``torch.nn.BatchNorm2d``: same parameters, buffers,
``state_dict`` keys, modes and ``repr``. Its forward and backward (a ``torch.autograd.Function``)
run bn2d's CPU kernels on the tensors in place: any layout (contiguous, channels_last, strided
views), float32, bfloat16 and float16 (with float32 parameters) and float64. What bn2d cannot run
raises ``bn2d.Error`` naming why; nothing falls back to PyTorch's kernels.

Tensors reach the extension as (data_ptr, dtype, sizes, strides): no torch C++ ABI is involved.
"""
import torch
from torch import nn

from . import _bn2d

Error = _bn2d.Error

# Output allocation, in one place: the tests poison what these return.
_empty_like = torch.empty_like
_empty = torch.empty

# The extension's dtype codes (kDtypes in python/src/bn2d_python.cpp).
_DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2, torch.float64: 3}


def _descriptor(t, name):
    """The extension's view of a tensor, (data_ptr, dtype code, sizes, strides); None stays
    None. On the per-call path of every call: kept to attribute reads."""
    if t is None:
        return None
    code = _DTYPE_CODES.get(t.dtype)
    if code is None:
        raise Error(f"bn2d.torch: {name} is {t.dtype}; bn2d runs float32, bfloat16, float16 "
                    "and float64 tensors")
    if not t.is_cpu:
        raise Error(f"bn2d.torch: {name} is on {t.device}: this build of bn2d runs CPU tensors")
    return (t.data_ptr(), code, t.shape, t.stride())


_HALF_DTYPES = (torch.bfloat16, torch.float16)


def _channel_dtype(input_dtype):
    """bn2d's per-channel values: float64 for float64 inputs, else float32."""
    return torch.float64 if input_dtype == torch.float64 else torch.float32


def _per_channel(t, input_dtype):
    """Per-channel tensor as the kernels take it. 16-bit parameters with 16-bit inputs (a module
    moved to bfloat16 as a whole) compute in float32, as PyTorch does: a float32 copy of C values.
    Any other mix is passed as it is, for bn2d to refuse with its message."""
    if t is not None and t.dtype in _HALF_DTYPES and t.dtype == input_dtype:
        return t.float()
    return t


def _store_back(buffers, used):
    """16-bit running statistics were updated in a float32 copy (_per_channel): store them back,
    rounded to their dtype."""
    for buffer, copy in zip(buffers, used):
        if buffer is not None and copy is not buffer:
            buffer.copy_(copy)


def _in_dtype(gradients, dtype):
    """Parameter gradients in the parameters' own dtype (16-bit parameters compute in float32)."""
    if dtype not in _HALF_DTYPES:
        return gradients
    return tuple(None if g is None else g.to(dtype) for g in gradients)


def _forward(input, weight, bias, running_mean, running_var, training, momentum, eps, relu,
             residual):
    """Runs the forward kernel; returns (out, save_mean, save_invstd) and the per-channel
    tensors it used."""
    x_desc, z_desc = _descriptor(input, "input"), _descriptor(residual, "residual")
    channels = input.shape[1] if input.dim() == 4 else 0
    out = _empty_like(input)
    save_mean = save_invstd = None
    if training:
        kind = _channel_dtype(input.dtype)
        save_mean = _empty(channels, dtype=kind)
        save_invstd = _empty(channels, dtype=kind)
    w, b = _per_channel(weight, input.dtype), _per_channel(bias, input.dtype)
    rm, rv = _per_channel(running_mean, input.dtype), _per_channel(running_var, input.dtype)
    _bn2d.batch_norm(
        x_desc, z_desc, _descriptor(w, "weight"), _descriptor(b, "bias"),
        _descriptor(rm, "running_mean"), _descriptor(rv, "running_var"),
        bool(training), float(momentum), float(eps), bool(relu), _descriptor(out, "out"),
        _descriptor(save_mean, "save_mean"), _descriptor(save_invstd, "save_invstd"))
    if training:
        _store_back((running_mean, running_var), (rm, rv))
    return out, save_mean, save_invstd, w, rm, rv


class _BatchNormFunction(torch.autograd.Function):
    """bn2d's forward and backward as one autograd node: grad_input, grad_weight, grad_bias
    (and the residual's gradient), each computed only when autograd asks for it."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, training, momentum, eps,
                relu, residual):
        out, save_mean, save_invstd, w, rm, rv = _forward(
            input, weight, bias, running_mean, running_var, training, momentum, eps, relu,
            residual)
        ctx.training, ctx.eps, ctx.relu = training, eps, relu
        ctx.has_residual = residual is not None
        ctx.weight_dtype = None if weight is None else weight.dtype
        stats = (save_mean, save_invstd) if training else (rm, rv)
        ctx.save_for_backward(input, w, *stats, out if relu else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        input, w, mean, stat, out = ctx.saved_tensors
        needs = ctx.needs_input_grad
        want_input, want_weight, want_bias = needs[0], needs[1], needs[2]
        want_residual = ctx.has_residual and needs[9]
        channels = input.shape[1]
        kind = _channel_dtype(input.dtype)
        grad_input = _empty_like(input) if want_input else None
        grad_residual = _empty_like(input) if want_residual else None
        grad_weight = _empty(channels, dtype=kind) if want_weight else None
        grad_bias = _empty(channels, dtype=kind) if want_bias else None
        train_stats = (mean, stat) if ctx.training else (None, None)
        eval_stats = (None, None) if ctx.training else (mean, stat)
        _bn2d.batch_norm_backward(
            _descriptor(grad_out, "grad_out"), _descriptor(input, "input"),
            _descriptor(out, "output"), _descriptor(w, "weight"),
            _descriptor(eval_stats[0], "running_mean"), _descriptor(eval_stats[1], "running_var"),
            _descriptor(train_stats[0], "save_mean"), _descriptor(train_stats[1], "save_invstd"),
            ctx.training, ctx.eps, ctx.relu, _descriptor(grad_input, "grad_input"),
            _descriptor(grad_weight, "grad_weight"), _descriptor(grad_bias, "grad_bias"),
            _descriptor(grad_residual, "grad_residual"))
        grad_weight, grad_bias = _in_dtype((grad_weight, grad_bias), ctx.weight_dtype)
        return (grad_input, grad_weight, grad_bias, None, None, None, None, None, None,
                grad_residual)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, residual=None, relu=False):
    """``torch.nn.functional.batch_norm`` on bn2d's kernels: same signature and semantics
    (running statistics updated in place when training). bn2d's fused tails as keywords:
    ``relu=True`` gives relu(bn(input)), ``residual=z`` bn(input) + z (relu(...) with both)."""
    needs_graph = torch.is_grad_enabled() and (
        input.requires_grad or (weight is not None and weight.requires_grad) or
        (bias is not None and bias.requires_grad) or
        (residual is not None and residual.requires_grad))
    if not needs_graph:  # inference: no autograd node, nothing saved
        return _forward(input, weight, bias, running_mean, running_var, training, momentum, eps,
                        relu, residual)[0]
    return _BatchNormFunction.apply(input, weight, bias, running_mean, running_var, training,
                                    momentum, eps, relu, residual)


class BatchNorm2d(nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` whose forward and backward run bn2d's kernels.

    Same constructor, parameters, buffers and behaviour as PyTorch's (``momentum=None``: a
    cumulative average over ``num_batches_tracked``). A failed call raises ``bn2d.Error`` and
    leaves the running statistics and ``num_batches_tracked`` as they were.
    """

    def forward(self, input):
        return self._run(input, None, False)

    def _update_factor(self):
        """(whether this call counts a batch, the running statistics' update factor), as
        PyTorch's _BatchNorm.forward computes them."""
        tracking = self.training and self.track_running_stats and \
            self.num_batches_tracked is not None
        momentum = 0.0 if self.momentum is None else self.momentum
        if tracking and self.momentum is None:
            momentum = 1.0 / float(self.num_batches_tracked + 1)  # cumulative moving average
        return tracking, momentum

    def _run(self, input, residual, relu):
        training = self.training or not self.track_running_stats
        tracking, momentum = self._update_factor()
        # PyTorch: eval mode with tracking uses the running statistics; training or no
        # tracking, the batch's (updating the running ones only if tracked and training).
        use_running = not self.training or self.track_running_stats
        out = batch_norm(input, self.running_mean if use_running else None,
                         self.running_var if use_running else None, self.weight, self.bias,
                         training, momentum, self.eps, residual=residual, relu=relu)
        if tracking:
            self.num_batches_tracked.add_(1)  # only once the kernels succeeded
        return out


class BatchNormReLU2d(BatchNorm2d):
    """relu(bn(x)) in one pass over the data (bn2d's fused tail), ``forward(x, residual=None)``:
    with a residual, relu(bn(x) + residual), the tail of torchvision's BasicBlock/Bottleneck.
    State and ``state_dict`` are BatchNorm2d's."""

    def forward(self, input, residual=None):
        return self._run(input, residual, True)


class _SyncBatchNormFunction(torch.autograd.Function):
    """torch.nn.SyncBatchNorm's training step on bn2d's kernels: this process's {count, mean,
    M2}, all-gathered and merged (every process gets the same bits), the normalization with the
    group's statistics; backward all-reduces the two per-channel sums grad_input needs."""

    @staticmethod
    def forward(ctx, input, weight, bias, running_mean, running_var, momentum, eps, group,
                world_size):
        channels = input.shape[1] if input.dim() == 4 else 0
        x_desc = _descriptor(input, "input")
        partial = torch.empty(3, channels, dtype=torch.float64)
        _bn2d.batch_norm_stats(x_desc, _descriptor(partial, "partial"))
        gathered = torch.empty(world_size, 3, channels, dtype=torch.float64)
        torch.distributed.all_gather(list(gathered.unbind(0)), partial, group=group)
        kind = _channel_dtype(input.dtype)
        save_mean, save_invstd, var = (_empty(channels, dtype=kind) for _ in range(3))
        rm, rv = _per_channel(running_mean, input.dtype), _per_channel(running_var, input.dtype)
        _bn2d.batch_norm_gather_stats(
            _descriptor(gathered, "gathered"), _descriptor(rm, "running_mean"),
            _descriptor(rv, "running_var"), float(momentum), float(eps),
            _descriptor(save_mean, "save_mean"), _descriptor(save_invstd, "save_invstd"),
            _descriptor(var, "var"))
        _store_back((running_mean, running_var), (rm, rv))
        # The normalization with the group's statistics is an eval-mode forward's.
        w, b = _per_channel(weight, input.dtype), _per_channel(bias, input.dtype)
        out = _empty_like(input)
        _bn2d.batch_norm(x_desc, None, _descriptor(w, "weight"), _descriptor(b, "bias"),
                         _descriptor(save_mean, "mean"), _descriptor(var, "var"), False, 0.0,
                         float(eps), False, _descriptor(out, "out"), None, None)
        ctx.save_for_backward(input, w, save_mean, save_invstd)
        ctx.eps, ctx.group = eps, group
        ctx.count = int(gathered[:, 0, 0].sum().item()) if channels else 0
        ctx.weight_dtype = None if weight is None else weight.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        input, w, save_mean, save_invstd = ctx.saved_tensors
        channels = input.shape[1]
        kind = _channel_dtype(input.dtype)
        grad_weight = _empty(channels, dtype=kind) if ctx.needs_input_grad[1] else None
        grad_bias = _empty(channels, dtype=kind) if ctx.needs_input_grad[2] else None
        sums = torch.empty(2, channels, dtype=torch.float64)
        common = (_descriptor(grad_out, "grad_out"), _descriptor(input, "input"),
                  _descriptor(w, "weight"), _descriptor(save_mean, "save_mean"),
                  _descriptor(save_invstd, "save_invstd"), float(ctx.eps))
        _bn2d.batch_norm_sync_backward(*common, None, _descriptor(grad_weight, "grad_weight"),
                                       _descriptor(grad_bias, "grad_bias"),
                                       _descriptor(sums, "sums"), 0)
        grad_input = None
        if ctx.needs_input_grad[0]:  # as PyTorch: only grad_input needs the group's sums
            torch.distributed.all_reduce(sums, group=ctx.group)
            grad_input = _empty_like(input)
            _bn2d.batch_norm_sync_backward(*common, _descriptor(grad_input, "grad_input"),
                                           None, None, _descriptor(sums, "sums"), ctx.count)
        grad_weight, grad_bias = _in_dtype((grad_weight, grad_bias), ctx.weight_dtype)
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None


class SyncBatchNorm(nn.SyncBatchNorm):
    """``torch.nn.SyncBatchNorm`` on bn2d's kernels, over ``torch.distributed`` (gloo on CPU):
    in training, statistics over the batches of every process of ``process_group``; in eval
    mode, or with one process, bn2d's BatchNorm2d. 4-D inputs (bn2d's BatchNorm2d).
    ``convert_sync_batchnorm(module)`` converts a model's batch norms to it."""

    _update_factor = BatchNorm2d._update_factor

    def forward(self, input):
        tracking, momentum = self._update_factor()
        group = self.process_group or torch.distributed.group.WORLD
        synced = self.training and torch.distributed.is_available() and \
            torch.distributed.is_initialized() and \
            torch.distributed.get_world_size(group) > 1
        if not synced:
            training = self.training or not self.track_running_stats
            use_running = not self.training or self.track_running_stats
            out = batch_norm(input, self.running_mean if use_running else None,
                             self.running_var if use_running else None, self.weight,
                             self.bias, training, momentum, self.eps)
        else:
            running = (self.running_mean, self.running_var) if self.track_running_stats \
                else (None, None)
            out = _SyncBatchNormFunction.apply(input, self.weight, self.bias, *running,
                                               momentum, self.eps, group,
                                               torch.distributed.get_world_size(group))
        if tracking:
            self.num_batches_tracked.add_(1)
        return out

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Every BatchNorm2d (PyTorch's or bn2d's) in ``module`` becomes bn2d's SyncBatchNorm,
        sharing its parameters and buffers."""
        if isinstance(module, nn.BatchNorm2d) and not isinstance(module, BatchNormReLU2d):
            new = _replacement(module, cls)
            new.process_group = process_group
            return new
        for name, child in module.named_children():
            converted = cls.convert_sync_batchnorm(child, process_group)
            if converted is not child:
                module.add_module(name, converted)
        return module


def _replacement(module, cls):
    new = cls(module.num_features, module.eps, module.momentum, module.affine,
              module.track_running_stats)
    if module.affine:
        new.weight, new.bias = module.weight, module.bias  # the same Parameters
    new.running_mean = module.running_mean
    new.running_var = module.running_var
    new.num_batches_tracked = module.num_batches_tracked
    new.train(module.training)
    if hasattr(module, "qconfig"):
        new.qconfig = module.qconfig
    return new


def convert(module):
    """Replaces every ``torch.nn.BatchNorm2d`` in ``module`` (and ``module`` itself) by bn2d's
    ``BatchNorm2d``, sharing its parameters and buffers and keeping its training mode, as
    ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` does. Returns the converted module."""
    if type(module) is nn.BatchNorm2d:
        return _replacement(module, BatchNorm2d)
    for name, child in module.named_children():
        converted = convert(child)
        if converted is not child:
            module.add_module(name, converted)
    return module


def _is_relu(node, modules):
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in (torch.relu, torch.relu_, nn.functional.relu)
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _only_user_of(node, modules, kinds):
    """Whether `node` is a batch norm module call of one of `kinds` with a single user."""
    return (node.op == "call_module" and type(modules.get(node.target)) in kinds and
            len(node.users) == 1)


def fuse(model):
    """Rewrites ``bn -> relu`` into ``BatchNormReLU2d(x)`` and ``bn + z -> relu`` (the tail of
    torchvision's BasicBlock and Bottleneck) into ``BatchNormReLU2d(x, z)``: one pass over the
    data instead of two or three. Traces ``model`` with torch.fx and returns the rewritten
    ``torch.fx.GraphModule``; the fused modules keep the batch norms' names, parameters and
    buffers (the same ``state_dict``). Batch norms (PyTorch's or bn2d's) that no ReLU follows
    become bn2d's ``BatchNorm2d``. A ReLU's result must be the batch norm's (or the sum's) only
    use, else that pair is left as it is. Like ``convert``, it replaces submodules of ``model``
    itself (the graph module shares them): pass a copy to keep the original."""
    import operator

    import torch.fx

    graph_module = torch.fx.symbolic_trace(model)
    graph = graph_module.graph
    modules = dict(graph_module.named_modules())
    kinds = (nn.BatchNorm2d, BatchNorm2d)

    def install(target, module):
        parent, _, name = target.rpartition(".")
        setattr(graph_module.get_submodule(parent) if parent else graph_module, name, module)
        modules[target] = module

    for node in list(graph.nodes):
        if not _is_relu(node, modules) or not node.args:
            continue
        source, residual, add = node.args[0], None, None
        if not isinstance(source, torch.fx.Node):
            continue
        if source.op == "call_function" and source.target in (operator.add, torch.add) and \
                len(source.users) == 1 and len(source.args) == 2 and not source.kwargs:
            add = source
            a, b = add.args
            if isinstance(b, torch.fx.Node) and _only_user_of(a, modules, kinds):
                source, residual = a, b
            elif isinstance(a, torch.fx.Node) and _only_user_of(b, modules, kinds):
                source, residual = b, a
            else:
                continue
        elif not _only_user_of(source, modules, kinds):
            continue
        install(source.target, _replacement(modules[source.target], BatchNormReLU2d))
        with graph.inserting_before(node):
            args = (source.args[0],) if residual is None else (source.args[0], residual)
            fused = graph.call_module(source.target, args)
        node.replace_all_uses_with(fused)
        for dead in (node, add, source):
            if dead is not None:
                graph.erase_node(dead)
    for target, module in list(modules.items()):
        if type(module) is nn.BatchNorm2d:
            install(target, _replacement(module, BatchNorm2d))
    graph.lint()
    graph_module.recompile()
    return graph_module

