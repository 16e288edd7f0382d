"""Concept-level explanations: which dissected concepts of a layer made a prediction. explain() splits
the Grad-CAM sum of the predicted class into per-unit contributions and names each unit by its
network-dissection concept; Explanation holds the result, its summary and its HTML page."""
from unitscope.explain.concepts import NO_CONCEPT
from unitscope.explain.explanation import ConceptContribution, Explanation, UnitContribution
from unitscope.explain.run import explain

__all__ = ["NO_CONCEPT", "ConceptContribution", "Explanation", "UnitContribution", "explain"]
