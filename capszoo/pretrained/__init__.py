"""Weights bundled with capszoo (the flagship model), so a machine without network works."""
