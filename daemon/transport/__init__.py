"""The link to a host: one SSH connection (key-only), its supervision, tunnels, and the
client of the remote agent that rides on it."""
