"""animalcls.core."""
