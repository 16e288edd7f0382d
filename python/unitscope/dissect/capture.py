"""Dissection's activation capture is unitscope.hooks.LayerCapture, the one capture every method uses
(`cap(x)`: maps of several layers per forward, token outputs as maps, the forward cut short once
every layer is captured); imported here so that `unitscope.dissect.LayerCapture` keeps working."""
from unitscope.hooks import LayerCapture, parse_layer, resolve_layer, tokens_to_map

__all__ = ["LayerCapture", "parse_layer", "resolve_layer", "tokens_to_map"]
