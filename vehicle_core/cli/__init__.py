"""The library's command lines: ``vehicle-classify`` (classify.py), ``vehicle-results`` (results.py),
and the one-line errors every command of the project prints (errors.py)."""
