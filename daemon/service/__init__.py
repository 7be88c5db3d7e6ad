"""The per-user agent: the daemon, its control API, the service-manager glue (unit files,
install, sd_notify) and the tray."""
