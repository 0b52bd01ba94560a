"""Storage of the results of succeeded jobs: the summary, row-chunked arrays and cached
plot images. The job process writes them (through ``service.jobs.queue`` and the array
writers); the HTTP side (``service.jobs.result_endpoints``) reads them."""
