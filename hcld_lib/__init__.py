"""hcld: a research companion for Hybrid Contrastive Learning Decoupling speech emotion recognition.

The package reads like the method: ``data`` -> ``features`` -> ``models`` -> ``losses`` ->
``training`` -> ``metrics`` / ``decoupling`` -> ``plots``.
"""

__version__ = "0.1.0"
