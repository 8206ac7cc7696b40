"""animalcls.serving."""
