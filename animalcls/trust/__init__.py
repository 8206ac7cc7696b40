"""animalcls.trust.verdicts."""
