"""Device profiles shipped with edge-runtime: one TOML file per class of box."""
