"""animalcls.store."""
