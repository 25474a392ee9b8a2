"""Graph plumbing, one job per module:

- ``read``: Conv nodes as ConvSpec/ConvSkip records, and the one Conv validity check;
- ``constants``: a graph's constant tensors (initializers, Constant nodes), read by name;
- ``offload``: a model's large weights in a private file, read back on demand (a measured run's memory);
- ``shapes``: the one dimension parser and the one graph-input shape resolver (lenient and strict views);
- ``infer``: shape inference of every tensor (weight-free skeleton, an ORT run for what it cannot reach);
- ``pads``: auto_pad and output-size arithmetic;
- ``edit``: fresh names, new nodes, splicing, cleanup, copies, sub-models for intermediate tensors;
- ``validate``: structural checks at load time, and typing graph outputs that declare no shape.

Every name ``from convopt.graph import X`` gave before the split is re-exported here.
"""
from __future__ import annotations

from convopt.graph.constants import ConstantTable
from convopt.graph.edit import (
    Builder,
    NameScope,
    Replacement,
    all_graphs,
    apply_replacements,
    copy_model,
    make_conv,
    remove_unused_constants,
    subgraphs,
    tensor,
    used_names,
    with_outputs,
)
from convopt.graph.infer import (
    SKELETON_MAX_ELEMENTS,
    infer_skeleton,
    infer_tensor_shapes,
    peak_live_bytes,
    inferred_dims,
    shape_skeleton,
)
from convopt.graph.pads import align_up, conv_out_size, resolve_pads
from convopt.graph.read import (
    FLOAT_TYPES,
    ConvAttrs,
    ConvIssue,
    ConvSkip,
    ConvSpec,
    attrs,
    conv_issue,
    conv_macs,
    node_display_name,
    read_convs,
)
from convopt.graph.shapes import (
    Dim,
    DynamicDim,
    InputShape,
    declared_dims,
    dynamic_dims,
    graph_input_shapes,
    graph_inputs,
    input_dtype,
    parse_input_shape,
    resolve_input_shapes,
    resolve_inputs,
    static_shape,
)
from convopt.graph.validate import fill_output_types, find_cycle, model_problem, untyped_outputs

__all__ = [
    "FLOAT_TYPES", "SKELETON_MAX_ELEMENTS", "Builder", "ConstantTable", "ConvAttrs", "ConvIssue", "ConvSkip", "ConvSpec", "Dim",
    "DynamicDim", "InputShape", "NameScope", "Replacement", "align_up", "all_graphs", "apply_replacements", "attrs",
    "conv_issue", "conv_macs", "conv_out_size", "copy_model", "declared_dims", "dynamic_dims", "fill_output_types",
    "find_cycle", "graph_input_shapes", "graph_inputs", "infer_skeleton", "infer_tensor_shapes", "inferred_dims", "peak_live_bytes",
    "input_dtype", "make_conv", "model_problem", "node_display_name", "parse_input_shape", "read_convs",
    "remove_unused_constants", "resolve_input_shapes", "resolve_inputs", "resolve_pads", "shape_skeleton",
    "static_shape", "subgraphs", "tensor", "untyped_outputs", "used_names", "with_outputs",
]
