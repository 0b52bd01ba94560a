"""Reading model files, one library at a time (see models.loading.load_model)."""
