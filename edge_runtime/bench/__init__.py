"""`edge-runtime bench`: each benchmark measures the project beside a baseline in the same run."""
