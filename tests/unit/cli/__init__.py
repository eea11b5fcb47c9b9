"""The CLI against its fake manager (tests/support/fake_manager.py): flags, output, exit codes."""
