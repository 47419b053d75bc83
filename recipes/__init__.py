"""Training recipes shipped with capszoo (TOML files validated by capszoo._recipe)."""
