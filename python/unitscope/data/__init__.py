"""Broden-format data: the dataset reader, its batch collation, a packed-label cache, and a
generated concept dataset in the same format."""
from unitscope.data.broden import BrodenDataset, collate_broden, decode_label_png
from unitscope.data.broden_meta import BrodenFormatError
from unitscope.data.generate import make_concept_dataset
from unitscope.data.pack import pack_broden

__all__ = ["BrodenDataset", "BrodenFormatError", "collate_broden", "decode_label_png",
           "make_concept_dataset", "pack_broden"]
