"""HTTP plumbing shared by the manager's and the worker's APIs."""
