"""Prefix/suffix execution: split the traced network at a unit so that the part upstream of the unit
runs once and only the downstream part runs per candidate keep-mask.

The suffix of a unit is every node that depends, directly or not, on one of the unit's producer
convs; the prefix is everything else. Changing the unit's keep-mask (or any unit whose producers are
all in the suffix) cannot change a prefix value, so the oracle caches the prefix's *frontier* (the
prefix values the suffix reads) once per unit and evaluates candidates with the suffix alone. Both
parts are fx GraphModules sharing the model's submodules, so ``graph.masked`` applies to them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from pagcp.graph.units import Unit


@dataclass
class Split:
    """A network cut at a unit: ``suffix(*prefix(*inputs)) == model(*inputs)``.

    ``prefix`` returns the frontier as a tuple, in the order of ``frontier`` (fx node names);
    ``suffix`` takes it as positional arguments.
    """

    unit: str
    prefix: fx.GraphModule
    suffix: fx.GraphModule
    frontier: list[str]

    def run_prefix(self, *inputs: torch.Tensor) -> tuple[Any, ...]:
        """The frontier values for ``inputs`` (compute once, reuse for every candidate)."""
        return self.prefix(*inputs)

    def run_suffix(self, frontier: tuple[Any, ...]) -> Any:
        """The model output from cached frontier values."""
        return self.suffix(*frontier)


def suffix_nodes(gm: fx.GraphModule, producers: set[str]) -> set[fx.Node]:
    """Nodes that depend on a call of one of the ``producers`` modules (the calls included)."""
    downstream: set[fx.Node] = set()
    for node in gm.graph.nodes:
        if (node.op == "call_module" and str(node.target) in producers) or any(
            n in downstream for n in node.all_input_nodes
        ):
            downstream.add(node)
    return downstream


def split_at(gm: fx.GraphModule, unit: Unit) -> Split:
    """Cut ``gm`` just before the first of ``unit``'s producer convs."""
    suffix = suffix_nodes(gm, {ref.module for ref in unit.producers})
    suffix.add(next(n for n in reversed(gm.graph.nodes) if n.op == "output"))
    nodes = list(gm.graph.nodes)
    frontier = [n for n in nodes if n not in suffix and n.op != "get_attr" and any(u in suffix for u in n.users)]

    prefix_graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in nodes:
        if node not in suffix:
            env[node] = prefix_graph.node_copy(node, lambda n: env[n])
    prefix_graph.output(tuple(env[n] for n in frontier))

    suffix_graph = fx.Graph()
    env = {n: suffix_graph.placeholder(n.name) for n in frontier}
    for node in nodes:
        if node in suffix or (node.op == "get_attr" and any(u in suffix for u in node.users)):
            env[node] = suffix_graph.node_copy(node, lambda n: env[n])
    return Split(
        unit.name,
        fx.GraphModule(gm, prefix_graph, class_name="Prefix"),
        fx.GraphModule(gm, suffix_graph, class_name="Suffix"),
        [n.name for n in frontier],
    )
