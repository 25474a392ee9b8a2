"""Instruments around the driver's steps (TVM's PassInstrument): each sees a step after its plan is applied
and returns a verdict; the keep-or-roll-back rules are instruments, never code inside a strategy's loop.
Measurement happens here, through the step, once per evaluator, whichever instruments ask for it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import onnx

from convopt.core.budget import Budget, Certificate
from convopt.core.plan import Plan
from convopt.handoff import Handoff
from convopt.measure.evaluator import Evaluator
from convopt.measure.measurement import Measurement
from convopt.report import NodeRewrite


@dataclass
class Step:
    """One plan applied to the base model: what instruments look at. ``records`` are the nodes this step
    rewrites that the previous kept step did not. A step may hand its model off to one measurement
    (``hand_off``: it is then let go once its session exists) and keep only what was measured."""

    name: str
    plan: Plan
    _model: onnx.ModelProto | None  # as deployed (quantized with --quantize int8); None once handed off
    records: list[NodeRewrite]
    fp32: onnx.ModelProto | None = field(default=None, repr=False)  # the rewritten FP32 model, when it differs
    _measured: dict[int, Measurement] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> onnx.ModelProto:
        if self._model is None:
            raise RuntimeError(f"{self.name}: its model was handed off to a measurement")
        return self._model

    def hand_off(self) -> Handoff:
        """The model, handed to one taker (an evaluator: see Evaluator.measure); the step holds it no longer."""
        model, self._model = self.model, None
        return Handoff(model)

    def measure(self, evaluator: Evaluator) -> Measurement:
        """This step's model measured by ``evaluator`` (once per evaluator)."""
        key = id(evaluator)
        if key not in self._measured:
            self._measured[key] = evaluator.measure(self.model, self.name)
        return self._measured[key]

    def remember(self, evaluator: Evaluator, measurement: Measurement) -> None:
        """Take ``measurement`` as this step's by ``evaluator`` (a step rebuilt from its plan: the same model)."""
        self._measured[id(evaluator)] = measurement

    def measurement(self, evaluator: Evaluator) -> Measurement | None:
        """The measurement ``evaluator`` took of this step, if any instrument asked for one."""
        return self._measured.get(id(evaluator))


@dataclass(frozen=True)
class Verdict:
    """An instrument's answer on one step; a budget verdict carries its certificate (the bounds)."""

    instrument: str
    ok: bool
    reason: str | None = None
    certificate: Certificate | None = None


class Instrument(Protocol):
    name: str

    def after_step(self, step: Step) -> Verdict: ...

    def after_decision(self, step: Step, kept: bool) -> None: ...


@dataclass
class BudgetGuard:
    """Keeps a step only if the upper confidence bound of each loss ``budget`` limits, on ``evaluator``'s
    (decision) data, is within it; ``looks``: how many such decisions share the confidence (Bonferroni)."""

    evaluator: Evaluator
    budget: Budget
    looks: int = 1
    name: str = "budget"

    def after_step(self, step: Step) -> Verdict:
        cert = self.budget.certify(step.measure(self.evaluator).outcomes, self.looks)
        return Verdict(self.name, cert.ok, cert.reason, cert)

    def after_decision(self, step: Step, kept: bool) -> None:
        return None


@dataclass
class SpeedGuard:
    """Keeps a step only if it measures faster than the last kept one (the original at first); both speedups
    are against the original, timed interleaved with it."""

    evaluator: Evaluator
    name: str = "speed"
    reference: float = 1.0
    what: str = "before the pass"

    def after_step(self, step: Step) -> Verdict:
        return self.verdict(step.measure(self.evaluator))

    def verdict(self, measurement: Measurement) -> Verdict:
        """The verdict on a step that ``measurement`` (by this guard's evaluator) measured."""
        sp = measurement.speedup
        if sp is None or sp > self.reference:
            return Verdict(self.name, True)
        return Verdict(self.name, False, f"measured no faster than {self.what} (speedup {sp:.3f}x vs "
                                         f"{self.reference:.3f}x)")

    def after_decision(self, step: Step, kept: bool) -> None:
        m = step.measurement(self.evaluator)
        if kept and m is not None and m.speedup is not None:
            self.reference = m.speedup


def rejection(verdicts: list[Verdict]) -> str | None:
    """The reasons of the verdicts that reject ('; '-joined), None when all accept."""
    reasons = [v.reason or v.instrument for v in verdicts if not v.ok]
    return "; ".join(reasons) or None
