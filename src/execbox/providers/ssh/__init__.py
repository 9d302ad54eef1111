"""The ssh provider: executions and sandboxes on another Linux host, inside execbox's isolation there."""
