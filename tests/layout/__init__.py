"""The package layout: floors and import circles."""
