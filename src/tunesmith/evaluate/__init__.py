"""Task metrics and the run report (tables and plots)."""
