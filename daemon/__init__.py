"""tether: the agent on the user's machine that keeps a laptop tied to a GPU box."""

__version__ = "0.1.0"
