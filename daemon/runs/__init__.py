"""Commands run on a host: starting and following them, triggers, the run history."""
