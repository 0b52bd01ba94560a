"""Results of succeeded jobs: the summary, row-chunked arrays, and rendered plots."""
