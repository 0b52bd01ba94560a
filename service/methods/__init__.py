"""The explanation methods as job kinds: each module defines one, ``KIND``, which
``service.startup.register_methods`` registers at start-up (importing registers nothing).

A module here only adapts: it checks a job against the catalogue at POST, turns the
dataset and model into arrays in the job process, calls the pure method from
``explainers``, and hands back the summary, arrays and figures.
"""
