"""Example user benchmark files for ``python -m kernels run FILE``."""
