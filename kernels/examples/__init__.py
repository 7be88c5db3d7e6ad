"""Example user benchmark files for ``python -m tether_kernels run FILE``."""
