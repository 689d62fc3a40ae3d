"""Making the same computation faster, never different: the device and its threads (`device`),
fused kernels (`fused`, `attention`) and the one door that switches them on (`fastpath`). Each
fast path has the plain PyTorch path beside it, and the tests hold them equal.

May import: cptlab.core.
"""
