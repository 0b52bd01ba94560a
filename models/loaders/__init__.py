"""One module per model library, each reading a file into a :class:`~.parts.LoadedParts`.

Every loader is called as ``loader(path, *, task, n_threads) -> LoadedParts`` and reports
what the file says (taking ``task`` only where the file cannot tell, as for ONNX and
TorchScript). :func:`models.loading.load_model` decides whether the format may be loaded
at all (pickle, joblib and TorchScript only when uploads are trusted) before a loader
runs, and reconciles the parts with the caller's arguments after. Libraries are imported
inside the loaders, so importing a loader module is cheap.
"""
