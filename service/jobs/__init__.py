"""Durable background jobs: the jobs table is the queue of record (DESIGN.md, Jobs).

``kinds`` is the plug-in registry the explanation methods join; ``queue`` holds every
statement that claims, heartbeats, fences and finishes a job; ``worker`` runs jobs in
child processes; ``service`` and ``endpoints`` are the HTTP side.
"""
