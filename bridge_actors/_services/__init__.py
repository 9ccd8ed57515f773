"""The services: one Trio task each, owning its state; no device and no HTTP here."""
