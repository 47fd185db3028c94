"""Transports: bytes only (serial here; TCP lives in the instrument runner)."""
