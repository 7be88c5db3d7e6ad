"""The remote agent: stdlib-only Python (>= 3.8) shipped to the host as source and run
there from a verified bundle; never imported by the daemon itself."""
