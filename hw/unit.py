"""The shape every transformer unit shares: streams whose payloads its config defines."""

from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["StreamUnit"]


class StreamUnit(wiring.Component):
    """A unit with an ``inp`` and an ``out`` stream and, when its config has a ``param_layout``,
    an always-ready ``params`` write stream; payloads are the config's ``in_layout``,
    ``out_layout`` and ``param_layout``."""

    def __init__(self, config):
        self._config = config
        members = {}
        if hasattr(config, "param_layout"):
            members["params"] = In(stream.Signature(config.param_layout))
        members["inp"] = In(stream.Signature(config.in_layout))
        members["out"] = Out(stream.Signature(config.out_layout))
        super().__init__(members)

    @property
    def config(self):
        return self._config
