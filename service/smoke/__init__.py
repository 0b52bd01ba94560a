"""``tabxai smoke``: an end-to-end check of a running tabxai, for users' CI.

The dataset and models it uploads ship in ``assets/`` with the numbers they must give
(``expected.json``), computed when the assets were built by the reference libraries
themselves (``python -m service.smoke.build_assets``). ``runner`` is the client.
"""
