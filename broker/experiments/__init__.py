"""Traffic splits and canaries between model aliases (issue 19)."""
