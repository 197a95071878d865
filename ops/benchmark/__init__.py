"""`./ops/bench`: the side-by-side benchmark (scenarios and their anchors in one run)."""
