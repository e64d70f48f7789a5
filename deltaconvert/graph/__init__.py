"""fx passes, one per module; each is a function ``GraphModule -> GraphModule`` that
works on the private traced copy (never on the caller's model)."""
