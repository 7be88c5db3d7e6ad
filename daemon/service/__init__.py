"""The per-user agent: the daemon, its control API and the service-manager glue."""
