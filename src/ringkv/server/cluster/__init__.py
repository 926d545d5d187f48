"""The cluster: the member table, its rings, the bully election and failure
detection around it, and the clock check that lets a node stamp versions."""
