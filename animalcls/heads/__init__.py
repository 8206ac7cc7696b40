"""animalcls.heads."""
