"""A plan is the one thing both strategies produce: for some Conv nodes, a pass and its ranks (and, once
computed, the factors). ``apply_plan`` turns a plan into a model, once, on a copy of the base model."""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import onnx

from convopt.graph import Builder, ConvSpec, NameScope, Replacement, apply_replacements, read_convs
from convopt.pages import drop_pages
from convopt.passes import Factors, FitContext, Ranks, get_pass
from convopt.passes.base import Geometry, ranks_key
from convopt.report import NodeRewrite


@dataclass(frozen=True)
class Choice:
    """One node's rewrite: ``pass_name`` at ``ranks``; ``factors`` when already computed (they are then
    emitted as they are: a refit, or the fits a rank search found)."""

    pass_name: str
    ranks: Ranks
    factors: Factors | None = None

    @property
    def key(self) -> str:
        return f"{self.pass_name}[{ranks_key(self.ranks)}]"

    def with_factors(self, factors: Factors) -> "Choice":
        return Choice(self.pass_name, dict(factors.ranks), factors)


@dataclass(frozen=True)
class Plan:
    """Node name → Choice, in the order the choices are applied (which decides fresh names)."""

    choices: Mapping[str, Choice] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.choices)

    def __contains__(self, node: object) -> bool:
        return node in self.choices

    def __iter__(self) -> Iterator[str]:
        return iter(self.choices)

    def items(self) -> Iterator[tuple[str, Choice]]:
        return iter(self.choices.items())

    def extended(self, more: "Plan | Mapping[str, Choice]") -> "Plan":
        """This plan, then ``more`` (a node already planned keeps its choice unless ``more`` replaces it)."""
        extra = more.choices if isinstance(more, Plan) else more
        return Plan({**self.choices, **extra})


@dataclass
class Applied:
    """A plan applied: the model, a record per rewritten node, and the factors each node got."""

    model: onnx.ModelProto
    records: list[NodeRewrite]
    plan: Plan  # the plan with every choice's factors filled in


def record(conv: ConvSpec, choice: Choice, factors: Factors, new_nodes: tuple[str, ...]) -> NodeRewrite:
    """What rewriting ``conv`` by ``choice`` did to it (MACs None when the layer's size is unknown)."""
    p = get_pass(choice.pass_name)
    known = Geometry.of(conv).known
    params = sum(int(a.size) for a in factors.arrays.values()) + (0 if factors.bias is None else factors.bias.size)
    return NodeRewrite(
        node=conv.name, kernel=tuple(conv.kernel), channels_in=conv.in_channels, channels_out=conv.out_channels,
        ranks=dict(factors.ranks), macs_before=p.dense_macs(conv) if known else None,
        macs_after=p.macs(conv, factors.ranks) if known else None, params_before=conv.params,
        params_after=int(params), weight_rel_error=float(factors.weight_rel_error), new_nodes=new_nodes,
        form=p.form(conv, factors.ranks))


def apply_plan(model: onnx.ModelProto, plan: Plan, convs: Mapping[str, ConvSpec], fit: FitContext = FitContext(),
               keep_factors: bool = True) -> Applied:
    """A copy of ``model`` with every planned Conv replaced by its pass's chain. ``convs``: the model's
    ConvSpecs by node name (``read_convs``). Choices without factors are decomposed here with ``fit``, the
    largest layers first, before the copy is built (the decompositions' LAPACK workspace is then not stacked on
    the copy); each layer's new weights are written into the copy as it is built. With ``keep_factors`` False
    the returned plan holds no factors and each layer's are dropped once written (memory: nothing will refit or
    reuse them)."""
    names = NameScope(model.graph)
    records: list[NodeRewrite] = []
    filled: dict[str, Choice] = {}
    computed = _decompose(plan, convs, fit)

    def replacements() -> Iterator[Replacement]:
        for node, choice in plan.items():
            conv = convs[node]
            p = get_pass(choice.pass_name)
            factors = choice.factors if choice.factors is not None else computed.pop(node)
            b = Builder(names, p.name, conv)
            p.emit(conv, factors, b)
            drop_pages(factors.arrays.values())  # factors set aside in a file (convopt.pages) leave memory again
            records.append(record(conv, choice, factors, tuple(n.name for n in b.nodes)))
            filled[node] = choice.with_factors(factors) if keep_factors else Choice(p.name, dict(factors.ranks))
            yield b.replacement()

    new = apply_replacements(model, replacements(), [convs[n] for n in plan])
    return Applied(new, records, Plan(filled))


def _decompose(plan: Plan, convs: Mapping[str, ConvSpec], fit: FitContext) -> dict[str, Factors]:
    """The factors of the choices that have none, largest weight first (the largest workspace comes first,
    when the fewest factors are held)."""
    todo = sorted((n for n, c in plan.items() if c.factors is None), key=lambda n: -convs[n].params)
    return {n: get_pass(plan.choices[n].pass_name).decompose(convs[n], plan.choices[n].ranks, fit) for n in todo}


def conv_table(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, ConvSpec]:
    """The model's rewritable Convs by node name."""
    return {c.name: c for c in read_convs(model, dict(shapes)) if isinstance(c, ConvSpec)}
