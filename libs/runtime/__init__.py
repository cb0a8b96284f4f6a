"""Service runtime: the composition pieces every keel service shares."""
