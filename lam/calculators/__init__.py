"""ASE calculators for reference codes used as labelers."""
