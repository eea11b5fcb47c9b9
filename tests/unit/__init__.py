"""Pure decisions and models, and the CLI against a fake manager: no I/O, no processes."""
