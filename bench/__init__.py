"""capszoo's benchmark suite: ``python -m bench [--quick] [--out PATH]`` (see ``bench/__main__.py``)."""
