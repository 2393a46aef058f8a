"""The five CLM services, one package each."""
