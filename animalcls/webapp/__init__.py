"""animalcls.webapp."""
