"""The `tether` command: one module per verb (commands/), each a thin call into the layers below."""
