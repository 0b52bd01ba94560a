"""The explanation methods as job kinds: each module registers one with the job system.

A module here only adapts: it checks a job against the catalogue at POST, turns the
dataset and model into arrays in the job process, calls the pure method from
``explainers``, and hands back the summary, arrays and figures.
"""
