"""The fx side of conversion: one pass per file, each a function ``GraphModule ->
GraphModule`` named like its file, run in order by :mod:`.pipeline`; the op registry
(:mod:`.registry`) that the planning pass consults; value info (:mod:`.analysis`) and
stable node names (:mod:`.names`) shared by the passes."""
