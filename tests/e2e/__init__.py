"""The real thing: anything marked docker, or that starts real processes, the CLI as a
subprocess, a browser, Prometheus, or the bench scripts."""
