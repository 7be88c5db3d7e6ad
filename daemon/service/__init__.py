"""The per-user agent as a service: service-manager files and install, sd_notify, the tray."""
