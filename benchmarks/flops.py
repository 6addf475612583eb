"""FLOP counts of the networks and of one CycleGAN training step, from layer shapes.

Convention
----------
* Only convolutions, transposed convolutions and dense layers are counted: one multiply-add (MAC)
  is 2 FLOPs. Bias adds, normalisation, activations, dropout, concatenation and the losses are
  elementwise and left out (under 2 % of the total for these networks).
* ``Conv2D``: ``out_h * out_w * out_c * k_h * k_w * in_c / groups`` MACs per image.
  ``Conv2DTranspose``: ``in_h * in_w * in_c * k_h * k_w * out_c`` MACs per image (every input
  pixel scatters one k x k x out_c kernel). ``Dense``: ``in * out`` per position.
* One network pass in a training step costs, in units of that network's forward FLOPs ``F``:
  ``1`` forward only (``predict``, or a frozen network whose input is data, so nothing flows back),
  ``2`` when gradients flow back through a frozen network to its input (forward + input gradient),
  ``3`` when the network's weights are trained (forward + input gradient + weight gradient).
  The input gradient of a network's first layer is counted although it is not needed, which is
  the usual "training = 3x forward" approximation.

:func:`graph_flops` counts the same quantities from a traced ``tf.function`` graph (Conv2D and
its two backprop ops, MatMul), which checks the pass lists below against what TensorFlow executes.
"""
from __future__ import annotations

import dataclasses

#: cost of a pass, in forward FLOPs of the network
FORWARD, INPUT_GRAD, TRAINED = 1, 2, 3


def _shape(tensor_or_shape):
    shape = getattr(tensor_or_shape, "shape", tensor_or_shape)
    return tuple(None if d is None else int(d) for d in shape)


def _prod(values):
    out = 1
    for v in values:
        out *= int(v)
    return out


def layer_macs(layer, input_shape, output_shape):
    """Multiply-adds of one call of ``layer`` on one image (batch axis ignored), or 0.

    Parameters
    ----------
    layer : keras.layers.Layer
    input_shape, output_shape : tuple
        Shapes of the call's input and output including the batch axis (channels last).
    """
    kind = type(layer).__name__
    in_shape, out_shape = input_shape[1:], output_shape[1:]
    if kind in ("Conv2D", "Conv1D", "Conv3D"):
        kernel = _prod(layer.kernel_size)
        groups = getattr(layer, "groups", 1) or 1
        return _prod(out_shape) * kernel * in_shape[-1] // groups
    if kind in ("Conv2DTranspose", "Conv1DTranspose", "Conv3DTranspose"):
        kernel = _prod(layer.kernel_size)
        return _prod(in_shape) * kernel * out_shape[-1]
    if kind == "DepthwiseConv2D":
        return _prod(out_shape) * _prod(layer.kernel_size)
    if kind == "Dense":
        return _prod(out_shape) * in_shape[-1]
    return 0


def forward_flops(model, per_layer=False):
    """Forward FLOPs of one image through a functional Keras ``model`` (nested models included).

    Returns the total, or ``(total, [(layer name, kind, flops), ...])`` with ``per_layer=True``.
    A layer called several times (shared weights) is counted once per call.
    """
    rows = []
    _walk(model, rows)
    total = sum(r[2] for r in rows)
    return (total, rows) if per_layer else total


def _walk(model, rows, prefix=""):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:  # a nested model
            _walk(layer, rows, prefix + layer.name + "/")
            continue
        for in_shape, out_shape in _call_shapes(layer):
            macs = layer_macs(layer, in_shape, out_shape)
            if macs:
                rows.append((prefix + layer.name, type(layer).__name__, 2 * macs))


def _call_shapes(layer):
    nodes = getattr(layer, "_inbound_nodes", None) or []
    shapes = []
    for node in nodes:
        ins = [t for t in getattr(node, "input_tensors", []) if t is not None]
        outs = [t for t in getattr(node, "output_tensors", []) if t is not None]
        if ins and outs:
            shapes.append((_shape(ins[0]), _shape(outs[0])))
    if not shapes and hasattr(layer, "input") and hasattr(layer, "output"):
        shapes.append((_shape(layer.input), _shape(layer.output)))
    return shapes


@dataclasses.dataclass(frozen=True)
class StepPasses:
    """The network passes of one CycleGAN training step, counted in forward-pass units.

    ``gen`` and ``disc`` are sums of pass costs (1, 2 or 3 per pass, see the module docstring)
    over all generator and all discriminator passes of one step, per image.
    """

    name: str
    gen: int
    disc: int
    description: str

    def flops_per_image(self, gen_forward, disc_forward):
        return self.gen * gen_forward + self.disc * disc_forward


#: The thesis-style loop (Brownlee's CycleGAN tutorial): per direction, ``predict`` of the fakes
#: (G 1), then the composite ``train_on_batch`` with inputs (real source, real target): trained G on
#: the real source (3), frozen D on that fake with gradient to its input (D 2), trained G on the
#: real target for identity (3), frozen other G on the fake for the forward cycle (2), frozen other
#: G on the real target, input is data (1), trained G on that for the backward cycle (3); then
#: D on real (3) and D on pooled fakes (3). Twice (A->B and B->A).
THESIS_LOOP = StepPasses(
    "thesis-style loop",
    gen=2 * (1 + 3 + 3 + 2 + 1 + 3),
    disc=2 * (2 + 3 + 3),
    description="per direction: predict G(1) + composite [G 3, D 2, G id 3, G2 2, G2 1, G 3] + D real 3 + D fake 3",
)

#: What a CycleGAN step has to compute, with nothing repeated: six generator passes, all trained
#: (G(A), F(G(A)), F(B), G(F(B)), identities G(B), F(A)), the adversarial terms through each D (2),
#: and each D trained on a real batch and on a (pooled) fake batch (3 + 3).
MINIMAL_STEP = StepPasses(
    "minimal CycleGAN step",
    gen=6 * TRAINED,
    disc=2 * (INPUT_GRAD + TRAINED + TRAINED),
    description="6 trained G passes + per D: adversarial pass 2, real 3, fake 3",
)


def step_flops(passes, gen_forward, disc_forward, batch):
    """FLOPs of one training step of ``batch`` images for a :class:`StepPasses`."""
    return batch * passes.flops_per_image(gen_forward, disc_forward)


# --------------------------------------------------------------------------- graph counting

_CONV_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter", "DepthwiseConv2dNative",
             "_FusedConv2D", "Conv3D")
_MATMUL_OPS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "_FusedMatMul")


def graph_flops(concrete_function):
    """FLOPs of the convolutions and matmuls in a traced ``tf.function`` (2 per MAC).

    For ``Conv2D`` (output ``[n, h, w, c_out]``), ``Conv2DBackpropInput`` and
    ``Conv2DBackpropFilter`` (``out_backprop`` ``[n, h, w, c_out]``) with a filter
    ``[k_h, k_w, c_in, c_out]`` the count is ``n h w k_h k_w c_in c_out``, so a forward conv,
    its input gradient, its weight gradient and a transposed conv of the same shape all count the
    same. Only ops that feed the function's outputs or side effects are counted (TensorFlow
    prunes the rest, e.g. weight gradients nobody asked for). Nested function calls are
    followed. Returns ``(flops, {op type: flops})``; ops with an
    unknown (dynamic) shape are skipped and counted under ``"unknown-shape"`` (number of ops).
    """
    by_type = {}
    _graph_walk(concrete_function.graph, by_type, seen=set())
    unknown = by_type.pop("unknown-shape", 0)
    total = sum(by_type.values())
    if unknown:
        by_type["unknown-shape"] = unknown
    return total, by_type


def _live_ops(graph):
    """Ops that feed the graph's outputs or side effects (what TensorFlow runs after pruning)."""
    roots = [t.op for t in getattr(graph, "outputs", []) if t is not None]
    roots += list(getattr(graph, "control_outputs", []) or [])
    if not roots:
        return graph.get_operations()
    live, stack = set(), list(roots)
    while stack:
        op = stack.pop()
        if op.name in live:
            continue
        live.add(op.name)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return [op for op in graph.get_operations() if op.name in live]


def _graph_walk(graph, by_type, seen):
    for op in _live_ops(graph):
        if op.type in _CONV_OPS or op.type in _MATMUL_OPS:
            flops = _op_flops(op)
            if flops is None:
                by_type["unknown-shape"] = by_type.get("unknown-shape", 0) + 1
            else:
                by_type[op.type] = by_type.get(op.type, 0) + flops
        for attr in ("f", "then_branch", "else_branch", "body"):
            try:
                fn = op.get_attr(attr)
            except (ValueError, TypeError):
                continue
            name = getattr(fn, "name", None)
            if name and name not in seen:
                seen.add(name)
                sub = _function_graph(graph, name)
                if sub is not None:
                    _graph_walk(sub, by_type, seen)


def _function_graph(graph, name):
    """The FuncGraph of a nested function called from ``graph`` (None if not reachable)."""
    g = graph
    while g is not None:
        fn = getattr(g, "_functions", {}).get(name)
        if fn is not None:
            return getattr(fn, "graph", None)
        g = getattr(g, "outer_graph", None)
    return None


def _op_flops(op):
    try:
        if op.type in ("Conv2D", "_FusedConv2D", "Conv3D"):
            out = op.outputs[0].shape.as_list()
            filt = op.inputs[1].shape.as_list()
            return 2 * _prod(out) * _prod(filt[:-1])
        if op.type in ("Conv2DBackpropInput", "Conv2DBackpropFilter"):
            dy = op.inputs[2].shape.as_list()
            if op.type == "Conv2DBackpropInput":
                filt = op.inputs[1].shape.as_list()
            else:
                filt = op.outputs[0].shape.as_list()
            return 2 * _prod(dy) * _prod(filt[:-1])
        if op.type == "DepthwiseConv2dNative":
            out = op.outputs[0].shape.as_list()
            filt = op.inputs[1].shape.as_list()
            return 2 * _prod(out) * _prod(filt[:2])
        if op.type in _MATMUL_OPS:
            a = op.inputs[0].shape.as_list()
            out = op.outputs[0].shape.as_list()
            transpose_a = False
            for attr in ("transpose_a", "adj_x"):
                try:
                    transpose_a = transpose_a or bool(op.get_attr(attr))
                except (ValueError, TypeError):
                    pass
            inner = a[-2] if transpose_a else a[-1]
            return 2 * _prod(out) * int(inner)
    except (TypeError, ValueError):
        return None
    return None
