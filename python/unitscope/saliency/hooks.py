"""The CAM methods' layer capture is unitscope.hooks.LayerCapture, the one capture every method uses;
imported here so that `unitscope.saliency.LayerCapture` and this module's names keep working."""
from unitscope.hooks import LayerCapture, parse_layer, resolve_layer

__all__ = ["LayerCapture", "parse_layer", "resolve_layer"]
