"""Durable background jobs: the jobs table is the queue of record (DESIGN.md, Jobs).

``queue`` holds every statement that claims, heartbeats, fences and finishes a job;
``worker`` runs jobs in child processes; ``service`` and ``endpoints`` are the HTTP side
of jobs, ``result_endpoints`` and ``plots`` that of their results (read from
``service.results``). The kinds of job come from ``service.registry``, filled at
start-up (``service.startup``): nothing here imports a method.
"""
