"""The text the lab trains and measures on: finding and loading models, tokenizers and documents
(`sources`, `wiki_sample`) and turning documents into an EOS-joined stream, whole-document splits
and fixed-length blocks (`corpus`).

May import: cptlab.core.
"""
