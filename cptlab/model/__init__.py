"""Training and measuring a model: the perplexity protocol (`perplexity`), the CPT loop
(`train`), the tiny preset's base model, pre-trained here once (`base_model`), and the shared
measurement of a step (`measure`).

May import: cptlab.core, cptlab.data, cptlab.speed.
"""
