"""Triton kernels, one module per op family (guidance, sampler_update).

The modules are imported lazily by the ``fastdiff::<op>_triton`` registrations in fastdiff/ops/:
Triton is optional and slow to import. They run on CUDA tensors, and on CPU tensors under
``TRITON_INTERPRET=1`` (how the tests exercise them on machines without a GPU).
"""
