"""The channel graph: trace a CNN once, find its pruning units, count, mask and slice from keep-masks.

trace (:mod:`.trace`) -> shapes (:mod:`.shapes`) -> channel couplings (:mod:`.channels`) -> pruning units and
the :class:`Keep` type (:mod:`.keep`) -> analytic FLOPs/params (:mod:`.counts`); masked execution
(:mod:`.masks`), physical slicing (:mod:`.slicing`) and prefix/suffix cuts (:mod:`.split`) of the same graph.
:class:`ChannelGraph` (:mod:`.channel_graph`) ties them together.
"""

from pagcp.graph.channel_graph import ChannelGraph
from pagcp.graph.heads import HeadMatcher, HeadReads
from pagcp.graph.keep import Keep, KeepLayout
from pagcp.graph.trace import trace
from pagcp.graph.units import ChannelRef, Unit

__all__ = ["ChannelGraph", "ChannelRef", "HeadMatcher", "HeadReads", "Keep", "KeepLayout", "Unit", "trace"]
